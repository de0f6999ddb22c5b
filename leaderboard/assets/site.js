// The leaderboard site's only script (vanilla JS, no network): sortable tables (click a header), a filter box per
// table, and a toggle that shows the folded detail columns.
'use strict';

(function () {
  function numberOf(cell) {
    const raw = cell.getAttribute('data-v');
    if (raw === null || raw === '') return null;
    const value = Number(raw);
    return Number.isNaN(value) ? null : value;
  }

  function textOf(cell) {
    return (cell.getAttribute('data-text') || cell.textContent).trim().toLowerCase();
  }

  // First click: better values first (data-better), text A to Z; a second click reverses. Empty cells stay last.
  function sortBy(table, th) {
    const index = Array.prototype.indexOf.call(th.parentNode.children, th);
    const numeric = th.dataset.kind === 'number';
    const current = th.getAttribute('aria-sort');
    const ascending = current ? current === 'descending' : !(numeric && th.dataset.better === 'higher');
    table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = a.cells[index], y = b.cells[index];
      if (numeric) {
        const p = numberOf(x), q = numberOf(y);
        if (p === null || q === null) return (p === null) - (q === null);
        return ascending ? p - q : q - p;
      }
      const order = textOf(x).localeCompare(textOf(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th) {
      th.tabIndex = 0;
      th.addEventListener('click', function () { sortBy(table, th); });
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(table, th); }
      });
    });
  });

  document.querySelectorAll('input.filter').forEach(function (input) {
    const table = document.getElementById(input.dataset.for);
    const count = document.getElementById(input.dataset.for + '-count');
    input.addEventListener('input', function () {
      const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      Array.from(table.tBodies[0].rows).forEach(function (row) {
        const text = row.dataset.search || row.textContent.toLowerCase();
        const hit = words.every(function (word) { return text.indexOf(word) >= 0; });
        row.hidden = !hit;
        if (hit) shown += 1;
      });
      if (count) count.textContent = shown + ' of ' + table.tBodies[0].rows.length + ' rows';
    });
  });

  document.querySelectorAll('button.details-toggle').forEach(function (button) {
    const table = document.getElementById(button.dataset.for);
    const label = button.textContent;
    button.addEventListener('click', function () {
      const shown = table.classList.toggle('show-details');
      button.setAttribute('aria-pressed', String(shown));
      button.textContent = shown ? 'hide details' : label;
    });
  });
})();
