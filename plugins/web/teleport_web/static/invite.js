"use strict";
// The invite/reset form: the two passwords must match before the form is sent (the server checks again).
(() => {
  const form = document.getElementById("invite");
  if (!form) return;
  const first = document.getElementById("password");
  const second = document.getElementById("password_confirm");
  const note = document.getElementById("mismatch");
  const check = () => {
    const differ = second.value !== "" && first.value !== second.value;
    second.setCustomValidity(differ ? "The two passwords do not match." : "");
    note.hidden = !differ;
    return !differ;
  };
  first.addEventListener("input", check);
  second.addEventListener("input", check);
  form.addEventListener("submit", (e) => {
    if (!check()) {
      e.preventDefault();
      second.reportValidity();
    }
  });
})();
