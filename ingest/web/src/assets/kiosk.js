// greenplate kiosk: small touches on top of plain forms (everything works without it).
(function () {
  'use strict';
  // A tag scanner types the tag id and presses Enter: in a form with more to fill in, go to
  // the next field instead of submitting half a form.
  document.querySelectorAll('input[data-scan]').forEach(function (input) {
    input.addEventListener('keydown', function (e) {
      if (e.key !== 'Enter') return;
      var fields = Array.prototype.filter.call(
        input.form.querySelectorAll('input:not([type=hidden]), select'),
        function (f) { return !f.disabled; });
      var i = fields.indexOf(input);
      if (fields.length > 1 && i >= 0 && i < fields.length - 1) {
        e.preventDefault();
        fields[i + 1].focus();
      }
    });
    input.addEventListener('change', function () {
      if (input.name.indexOf('tag_id') >= 0) input.value = input.value.replace(/\s+/g, '').toUpperCase();
    });
  });
  // One submission per form on a slow connection.
  document.querySelectorAll('form').forEach(function (form) {
    form.addEventListener('submit', function () {
      var b = form.querySelector('button[type=submit]');
      if (b) { b.disabled = true; b.classList.add('busy'); }
    });
  });
  // Put the cursor where the error is.
  var bad = document.querySelector('.field.bad input');
  if (bad) bad.focus();
})();
