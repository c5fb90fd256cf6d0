// Settings forms whose fields depend on one choice (a group's strategy, a health check's or a
// notification's kind): a field whose input says data-shown-with="strategy"
// data-shown-for="rolling canary" is shown only while the form's "strategy" field has one of
// those values. Without this script every field is shown, and the services ignore the ones
// the choice does not use.
(function () {
  "use strict";

  function update(form) {
    form.querySelectorAll("[data-shown-with]").forEach(function (input) {
      var control = form.elements.namedItem(input.getAttribute("data-shown-with"));
      var field = input.closest(".field");
      if (!control || !field || !("value" in control)) return;
      var values = (input.getAttribute("data-shown-for") || "").split(" ");
      field.hidden = values.indexOf(control.value) < 0;
    });
  }

  document.querySelectorAll("form").forEach(function (form) {
    if (!form.querySelector("[data-shown-with]")) return;
    update(form);
    form.addEventListener("change", function () { update(form); });
  });
})();
