// mailroom serve: keeps the page live without reloads. When /events says the
// tree changed, fetch this same page again and swap in its <main>. The HTML
// comes from this server, already escaped; DOMParser runs no scripts.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var busy = false;
  var again = false;
  var generation = 0;

  function setLive(text, on) {
    if (!live) return;
    live.textContent = text;
    live.className = "live " + (on ? "on" : "off");
  }

  function openDetails(root) {
    var ids = [];
    root.querySelectorAll("details[open][id]").forEach(function (d) { ids.push(d.id); });
    return ids;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { cache: "no-store", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main");
        var old = document.querySelector("main");
        if (!fresh || !old) return;
        var open = openDetails(old);
        open.forEach(function (id) {
          var d = fresh.querySelector("details#" + CSS.escape(id));
          if (d) d.open = true;
        });
        fresh.setAttribute("data-generation", String(generation));
        keepScroll(document.getElementById("live-output"));
        old.replaceWith(document.adoptNode(fresh));
        follow();
        var t = doc.querySelector("title");
        if (t) document.title = t.textContent;
      })
      .catch(function () { /* the next change notice tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  // A running task's output: one stream per page, kept across the swaps of
  // <main>; its text is painted into whichever #live-output is current.
  // Its scroll is kept too: at the bottom it follows the output (as tail -f
  // does, from the start), scrolled up it stays where the reader left it,
  // and a fresh <main> takes over either.
  var outSrc = null, outEs = null, outText = "";
  var outStick = true, outTop = 0;
  var OUT_MAX = 512 * 1024;
  function keepScroll(el) {
    if (!el || !el.hasAttribute("data-painted")) return;
    outStick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    outTop = el.scrollTop;
  }
  function paintOutput() {
    var el = document.getElementById("live-output");
    if (!el) return;
    keepScroll(el);
    el.textContent = outText;
    el.setAttribute("data-painted", "");
    el.scrollTop = outStick ? el.scrollHeight : outTop;
  }
  function follow() {
    var el = document.getElementById("live-output");
    var src = el ? el.getAttribute("data-stream") : null;
    if (src === outSrc) { if (outSrc) paintOutput(); return; }
    if (outEs) { outEs.close(); outEs = null; }
    outStick = true; outTop = 0;
    outSrc = src; outText = el ? el.textContent : "";
    paintOutput();
    if (!src || !window.EventSource) return;
    outEs = new EventSource(src);
    outEs.addEventListener("reset", function (e) { outText = JSON.parse(e.data); paintOutput(); });
    outEs.addEventListener("append", function (e) {
      outText += JSON.parse(e.data);
      if (outText.length > OUT_MAX) outText = outText.slice(outText.length - OUT_MAX);
      paintOutput();
    });
    outEs.addEventListener("end", function () { outEs.close(); });
    var mine = outEs;
    outEs.onerror = function () {
      // Refused (503: too many streams open): try again in a while, if the
      // page still shows this task's output.
      if (mine.readyState !== EventSource.CLOSED) return;
      setTimeout(function () {
        if (outEs === mine) { outSrc = null; follow(); }
      }, 10000);
    };
  }
  follow();

  if (!window.EventSource) { setLive("static", false); return; }
  function listen() {
    var es = new EventSource("/events");
    es.addEventListener("hello", function (e) {
      setLive("live (" + e.data + ")", true);
      // Anything that happened while (re)connecting, or since the page was
      // rendered: a change between the render and this stream's start
      // sends no notice (a task cancelled from its page right after it
      // loaded stayed "running" on a busy machine).
      refresh();
    });
    es.addEventListener("change", function () {
      generation += 1;
      refresh();
    });
    es.onerror = function () {
      setLive("reconnecting…", false);
      // A refused stream (503: too many open) is not retried by the
      // browser itself: try again in a while.
      if (es.readyState === EventSource.CLOSED) setTimeout(listen, 10000);
    };
  }
  listen();
})();
