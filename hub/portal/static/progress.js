// The progress page updates by itself: it asks /api/me/transfers/{id} every 2 s and reloads the
// page when the transfer's status or any step's status changed; it stops once the transfer is final.
(function () {
  var box = document.getElementById("progress");
  if (!box) return;
  var FINAL = ["completed", "refused", "cancelled"];
  var id = box.getAttribute("data-id");
  var status = box.getAttribute("data-status");
  var sig = box.getAttribute("data-sig");
  if (FINAL.indexOf(status) >= 0) return;
  function poll() {
    fetch("/api/me/transfers/" + encodeURIComponent(id), {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (t) {
        if (!t) { setTimeout(poll, 5000); return; }
        var now = t.steps.map(function (s) { return s.status; }).join(",");
        if (t.status !== status || now !== sig) { window.location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
