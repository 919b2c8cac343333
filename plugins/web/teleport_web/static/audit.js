// The audit log page: editing From/To picks the custom range; "Expand all" opens every event's
// JSON. Everything works without this script (the range select, <details>).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const range = document.getElementById("range");
  for (const id of ["from", "to"]) {
    const input = document.getElementById(id);
    if (input && range) {
      input.addEventListener("input", () => { range.value = "custom"; });
    }
  }
  const expand = document.getElementById("expand-all");
  const all = Array.from(document.querySelectorAll("details.eventjson"));
  if (expand && all.length) {
    expand.hidden = false;
    expand.addEventListener("click", () => {
      const open = !all.every((d) => d.open);
      for (const d of all) d.open = open;
      expand.textContent = open ? "Collapse all" : "Expand all";
    });
  }
});
