// The form: an upload or a test image, not both; a file too large is refused before it is sent
// (the server checks again); while the model answers, the button waits.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("ask");
  const example = document.getElementById("example");
  const files = form.querySelectorAll("input[type=file]");
  const problem = document.getElementById("client-error");
  const max = Number(form.dataset.maxBytes);

  files.forEach((input) => input.addEventListener("change", () => { if (input.files.length && example) example.value = ""; }));
  if (example) example.addEventListener("change", () => { if (example.value) files.forEach((input) => { input.value = ""; }); });

  form.addEventListener("submit", (event) => {
    const total = Array.from(files).reduce((sum, input) => sum + (input.files.length ? input.files[0].size : 0), 0);
    if (total > max) {
      event.preventDefault();
      problem.textContent = `the upload is ${(total / 1048576).toFixed(1)} MB; at most ${(max / 1048576).toFixed(0)} MB are accepted`;
      problem.hidden = false;
      return;
    }
    problem.hidden = true;
    form.querySelector("button").disabled = true;
    document.getElementById("working").hidden = false;
  });
});
