// Stamps this page's style nonce (its own <script nonce>) on every <style> element created later:
// xterm.js sizes and colours its cells with <style> elements, which the CSP allows only with the
// nonce the proxy put in this response's style-src (teleport_core.webui.STYLE_NONCE_HEADER).
(() => {
  "use strict";
  const nonce = document.currentScript.nonce;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function (name, options) {
    const element = create.call(this, name, options);
    if (String(name).toLowerCase() === "style") element.setAttribute("nonce", nonce);
    return element;
  };
})();
