// Slipway: small behaviours every page shares. Everything works without it, just with
// fewer niceties (no confirmation, no copy button).
(function () {
  "use strict";

  // <form data-confirm="Question?">: one confirmation before a change that matters.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  function textOf(element) {
    if (element instanceof HTMLInputElement || element instanceof HTMLTextAreaElement) {
      return element.value;
    }
    return element.textContent.trim();
  }

  function copyWithSelection(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (error) { copied = false; }
    area.remove();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-copy], [data-reveal]") : null;
    if (!button) return;
    var selector = button.getAttribute("data-copy") || button.getAttribute("data-reveal");
    var target = document.querySelector(selector);
    if (!target) return;
    if (button.hasAttribute("data-reveal")) {
      var hidden = target.getAttribute("type") === "password";
      target.setAttribute("type", hidden ? "text" : "password");
      button.textContent = hidden ? "Hide" : "Show";
      return;
    }
    var text = textOf(target);
    var copy = navigator.clipboard && window.isSecureContext
      ? navigator.clipboard.writeText(text)
      : copyWithSelection(text);
    var label = button.textContent;
    copy.then(function () { button.textContent = "Copied"; }, function () {
      button.textContent = "Select and copy";
      if (target.select) target.select();
    }).then(function () {
      setTimeout(function () { button.textContent = label; }, 1600);
    });
  });
})();
