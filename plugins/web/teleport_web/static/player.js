// The recording player page (templates/player.html): asciinema-player on the segmented index
// the proxy serves (pages/recordings.py), a speed menu and the share link's copy button.
(() => {
  "use strict";
  const box = document.getElementById("player");
  const state = { player: null, firstFrameMs: null, ended: false, error: "" };
  window.recordingPlayer = state;

  function create(speed, startAt) {
    box.replaceChildren();
    const player = AsciinemaPlayer.create({ url: box.dataset.index, format: "segmented" }, box, {
      speed: speed, startAt: startAt, autoPlay: true, fit: "width", terminalFontSize: "15px",
    });
    player.addEventListener("playing", () => {
      if (state.firstFrameMs === null) state.firstFrameMs = performance.now();
      box.dataset.state = "playing";
    });
    player.addEventListener("pause", () => { box.dataset.state = "paused"; });
    player.addEventListener("ended", () => { state.ended = true; box.dataset.state = "ended"; });
    state.player = player;
    return player;
  }

  create(Number(box.dataset.speed) || 1, Number(box.dataset.start) || 0);

  document.getElementById("speed").addEventListener("change", async (event) => {
    const at = await state.player.getCurrentTime();
    state.player.dispose();
    create(Number(event.target.value) || 1, at);
  });

  const share = document.getElementById("share");
  document.getElementById("copy").addEventListener("click", async () => {
    share.select();
    try {
      await navigator.clipboard.writeText(share.value);
      document.getElementById("copied").textContent = "copied";
    } catch (err) {
      document.getElementById("copied").textContent = "select the link and copy it";
    }
  });
})();
