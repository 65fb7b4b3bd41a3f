"use strict";
// Click a column title to sort the table by it: the better values first (the column's
// data-best), click again for the other way. Empty cells stay last; equal values keep
// the ranking's order.
(function () {
  var table = document.getElementById("board");
  if (!table || !table.tBodies.length) {
    return;
  }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, column) {
    var button = th.querySelector("button");
    if (!button) {
      return;
    }
    button.addEventListener("click", function () {
      var best = th.getAttribute("data-best") === "desc" ? -1 : 1;
      var bestName = best === 1 ? "ascending" : "descending";
      var order = th.getAttribute("aria-sort") === bestName ? -best : best;
      var numeric = th.getAttribute("data-type") === "number";
      var keyed = Array.prototype.map.call(body.rows, function (row) {
        var raw = row.cells[column].getAttribute("data-sort");
        var value = raw === null || raw === "" ? null : numeric ? Number(raw) : raw;
        return { row: row, value: value, at: Number(row.getAttribute("data-order")) };
      });
      keyed.sort(function (a, b) {
        if (a.value === null || b.value === null) {
          return a.value === b.value ? a.at - b.at : a.value === null ? 1 : -1;
        }
        if (a.value < b.value) {
          return -order;
        }
        if (a.value > b.value) {
          return order;
        }
        return a.at - b.at;
      });
      keyed.forEach(function (entry) {
        body.appendChild(entry.row);
      });
      heads.forEach(function (other) {
        other.removeAttribute("aria-sort");
      });
      th.setAttribute("aria-sort", order === 1 ? "ascending" : "descending");
    });
  });
})();
