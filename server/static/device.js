// The device check: measure the window and the pointer, then let the server decide.
(function () {
  "use strict";
  var form = document.getElementById("device-form");
  function measure() {
    var w = window.innerWidth, h = window.innerHeight;
    form.width.value = w;
    form.height.value = h;
    form.screen_width.value = window.screen.width;
    form.screen_height.value = window.screen.height;
    var fine = window.matchMedia && window.matchMedia("(any-pointer: fine)").matches;
    var coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    form.touch_only.value = (coarse && !fine) ? "1" : "0";
    form.mobile.value = (navigator.userAgentData && navigator.userAgentData.mobile) ? "1" : "0";
    document.getElementById("size").textContent = w + " x " + h + " pixels";
  }
  measure();
  window.addEventListener("resize", measure);
  form.addEventListener("submit", measure);
})();
