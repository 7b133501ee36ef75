// Click a header to sort; again to reverse. Numbers sort as numbers; missing values stay last either way.
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir);
      var sign = dir === "ascending" ? 1 : -1;
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value") || "", y = b.cells[col].getAttribute("data-value") || "";
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        if (!isNaN(nx) && !isNaN(ny)) { return sign * (nx - ny); }
        return sign * x.localeCompare(y, undefined, {numeric: true});
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
