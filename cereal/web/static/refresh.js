// Live refresh (reload every 5 s while the "Live" box is ticked and no form field has focus)
// and confirmation of dangerous actions. No network access beyond this dashboard.
(function () {
  "use strict";
  var KEY = "cereal-live";
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("live-refresh");
    if (box) {
      box.checked = window.localStorage.getItem(KEY) === "1";
      box.addEventListener("change", function () {
        window.localStorage.setItem(KEY, box.checked ? "1" : "0");
      });
      window.setInterval(function () {
        var active = document.activeElement;
        var typing = active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) && active !== box;
        if (box.checked && !typing) {
          window.location.reload();
        }
      }, 5000);
    }
    var forms = document.querySelectorAll("form[data-confirm]");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("submit", function (event) {
        if (!window.confirm(this.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    }
  });
})();
