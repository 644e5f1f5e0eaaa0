// faramir gallery: the Map view. Every placed image is one point drawn with WebGL (our own few
// dozen lines of it: the usual scatterplot libraries compile shaders with eval, which the
// page's Content-Security-Policy forbids). Coordinates and colour values arrive as binary arrays
// (/api/map/points, /api/map/colours), never as JSON objects; the decision at the threshold is
// coloured here from the confidences, so moving the threshold asks the server nothing.
"use strict";

(function () {
  const PALETTE = [  // the 30 reasons: accept side greens and blues, reject side warm and purple hues
    ...Array.from({ length: 9 }, (_, i) => hsl(95 + i * 16, 0.6, 0.45)),
    ...Array.from({ length: 21 }, (_, i) => hsl((330 + i * 17) % 360, 0.7, 0.5)),
  ];
  const ACC = [46, 160, 67, 255], REJ = [214, 56, 56, 255], NONE = [140, 140, 150, 255], FAINT = [200, 200, 208, 255];
  const BACKGROUND = [0.07, 0.08, 0.1];

  function hsl(h, s, l) {
    const k = (n) => (n + h / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
    return [Math.round(255 * f(0)), Math.round(255 * f(8)), Math.round(255 * f(4)), 255];
  }

  function ramp(c) {  // confidence 0 → red, 0.5 → amber, 1 → green
    if (!(c === c)) return NONE;
    const t = Math.max(0, Math.min(1, c));
    const lerp = (a, b, u) => a.map((x, i) => Math.round(x + (b[i] - x) * u));
    return t < 0.5 ? lerp(REJ, [230, 170, 40, 255], t * 2) : lerp([230, 170, 40, 255], ACC, (t - 0.5) * 2);
  }

  const VERTEX = `attribute vec2 pos; attribute vec4 colour; uniform vec2 scale; uniform vec2 shift; uniform float size;
    varying vec4 v; void main() { gl_Position = vec4(pos * scale + shift, 0.0, 1.0); gl_PointSize = size; v = colour; }`;
  const FRAGMENT = `precision mediump float; varying vec4 v;
    void main() { vec2 c = gl_PointCoord * 2.0 - 1.0; if (dot(c, c) > 1.0) discard; gl_FragColor = v; }`;

  class MapView {
    constructor(ctx) {
      this.ctx = ctx;  // { api, post, state(), openSelection(poly), queueSelection(poly), labelled(counts), toast }
      this.canvas = document.getElementById("map-canvas");
      this.overlay = document.getElementById("map-overlay");
      this.tip = document.getElementById("map-tip");
      this.gl = this.canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: false, alpha: false });
      if (!this.gl) throw new Error("this browser has no WebGL: the map cannot be drawn");
      this.program = this.compile();
      this.posBuffer = this.gl.createBuffer();
      this.colourBuffer = this.gl.createBuffer();
      this.info = null; this.xy = null; this.values = {}; this.rgba = null; this.ids = new Map();
      this.view = { cx: 0, cy: 0, zoom: 1 };
      this.lasso = null; this.poly = null; this.lassoMode = false; this.drag = null; this.hovered = -1;
      this.lastRecolourMs = 0; this.ready = false;
      this.wire();
    }

    compile() {
      const gl = this.gl;
      const shader = (type, src) => {
        const s = gl.createShader(type);
        gl.shaderSource(s, src);
        gl.compileShader(s);
        if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
        return s;
      };
      const p = gl.createProgram();
      gl.attachShader(p, shader(gl.VERTEX_SHADER, VERTEX));
      gl.attachShader(p, shader(gl.FRAGMENT_SHADER, FRAGMENT));
      gl.linkProgram(p);
      return p;
    }

    // -- data ------------------------------------------------------------------------------------

    async load() {
      this.ready = false;
      const info = await this.ctx.api("/api/map");
      this.info = info;
      if (!info.count) return info;
      const response = await fetch(`/api/map/points?key=${info.key}`);
      if (!response.ok) throw new Error(`the map's points: ${response.status}`);
      this.xy = new Float32Array(await response.arrayBuffer());
      const gl = this.gl;
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.xy, gl.STATIC_DRAW);
      this.rgba = new Uint8Array(info.count * 4);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colourBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.rgba, gl.DYNAMIC_DRAW);
      this.values = {}; this.ids = new Map(); this.grid = null;
      this.fit();
      return info;
    }

    async colours(by, head) {  // one colour array per (mode, head), fetched once
      const mode = by === "decision" ? "confidence" : by;
      const name = mode === "label" ? "label" : `${mode}:${head}`;
      if (!this.values[name]) {
        const r = await fetch(`/api/map/colours?` + new URLSearchParams({ key: this.info.key, head, by: mode }));
        if (!r.ok) throw new Error(((await r.json().catch(() => ({}))).error) || `the map's colours: ${r.status}`);
        const buffer = await r.arrayBuffer();
        this.values[name] = mode === "confidence" ? new Float32Array(buffer) : new Uint8Array(buffer);
      }
      return this.values[name];
    }

    async show() {
      const s = this.ctx.state();
      await this.colours("confidence", s.head);  // the decision, the reason's side and the hover's figure
      const values = await this.colours(s.by, s.head);
      this.recolour(values, s.by, Number(s.t));
      this.ready = true;
    }

    recolour(values, by, t) {
      const t0 = performance.now();
      const n = this.info.count, out = this.rgba, tf = Math.fround(t);
      const conf = by === "reason" ? this.values[`confidence:${this.ctx.state().head}`] : null;  // the side of each reason
      for (let i = 0; i < n; i++) {
        let c;
        if (by === "decision") c = values[i] === values[i] ? (values[i] > tf ? ACC : REJ) : NONE;
        else if (by === "confidence") c = ramp(values[i]);
        else if (by === "reason") {
          const code = conf && conf[i] > tf ? values[2 * i] : values[2 * i + 1];
          c = code < 30 ? PALETTE[code] : NONE;
        } else c = values[i] === 0 ? FAINT : values[i] === 1 || (values[i] >= 3 && values[i] < 12) ? ACC : REJ;
        const o = 4 * i;
        out[o] = c[0]; out[o + 1] = c[1]; out[o + 2] = c[2]; out[o + 3] = c[3];
      }
      const gl = this.gl;
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colourBuffer);
      gl.bufferSubData(gl.ARRAY_BUFFER, 0, out);
      this.draw();
      gl.finish();
      this.lastRecolourMs = performance.now() - t0;
      this.legend(by);
    }

    // -- drawing --------------------------------------------------------------------------------

    fit() {
      const [x0, y0, x1, y1] = this.info.bounds;
      this.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, zoom: 1, span: Math.max(x1 - x0, y1 - y0, 1e-6) * 1.08 };
    }

    size() {
      const rect = this.canvas.getBoundingClientRect();
      const dpr = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round(rect.width * dpr)), h = Math.max(1, Math.round(rect.height * dpr));
      if (this.canvas.width !== w || this.canvas.height !== h) {
        this.canvas.width = w; this.canvas.height = h; this.overlay.width = w; this.overlay.height = h;
      }
      return { w, h, dpr, rect };
    }

    scale() {  // layout units → clip space, square pixels
      const { w, h } = this.size();
      const s = (2 / this.view.span) * this.view.zoom;
      return w > h ? [s * h / w, s] : [s, s * w / h];
    }

    draw() {
      const gl = this.gl, { w, h, dpr } = this.size();
      const [sx, sy] = this.scale();
      gl.viewport(0, 0, w, h);
      gl.clearColor(...BACKGROUND, 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      if (!this.info || !this.info.count) return;
      gl.useProgram(this.program);
      const pos = gl.getAttribLocation(this.program, "pos"), colour = gl.getAttribLocation(this.program, "colour");
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
      gl.enableVertexAttribArray(pos);
      gl.vertexAttribPointer(pos, 2, gl.FLOAT, false, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colourBuffer);
      gl.enableVertexAttribArray(colour);
      gl.vertexAttribPointer(colour, 4, gl.UNSIGNED_BYTE, true, 0, 0);
      gl.uniform2f(gl.getUniformLocation(this.program, "scale"), sx, sy);
      gl.uniform2f(gl.getUniformLocation(this.program, "shift"), -this.view.cx * sx, -this.view.cy * sy);
      const spacing = Math.sqrt((w * h) / this.info.count) * Math.sqrt(this.view.zoom);
      gl.uniform1f(gl.getUniformLocation(this.program, "size"), Math.max(2 * dpr, Math.min(12 * dpr, spacing * 0.35)));
      gl.drawArrays(gl.POINTS, 0, this.info.count);
      this.drawOverlay();
    }

    project(i) {  // point i → CSS pixels within the canvas
      const { rect } = this.size(), [sx, sy] = this.scale();
      const x = (this.xy[2 * i] - this.view.cx) * sx, y = (this.xy[2 * i + 1] - this.view.cy) * sy;
      return [(x + 1) / 2 * rect.width, (1 - y) / 2 * rect.height];
    }

    unproject(px, py) {  // CSS pixels → layout units
      const { rect } = this.size(), [sx, sy] = this.scale();
      return [(px / rect.width * 2 - 1) / sx + this.view.cx, (1 - py / rect.height * 2) / sy + this.view.cy];
    }

    drawOverlay() {
      const g = this.overlay.getContext("2d"), { dpr } = this.size();
      g.clearRect(0, 0, this.overlay.width, this.overlay.height);
      const path = this.lasso || this.poly;
      if (!path || path.length < 2) return;
      g.beginPath();
      const [sx, sy] = this.scale(), { rect } = this.size();
      path.forEach(([x, y], k) => {
        const px = ((x - this.view.cx) * sx + 1) / 2 * rect.width * dpr, py = (1 - (y - this.view.cy) * sy) / 2 * rect.height * dpr;
        k ? g.lineTo(px, py) : g.moveTo(px, py);
      });
      if (!this.lasso) g.closePath();
      g.strokeStyle = "#ffd54a"; g.lineWidth = 2 * dpr; g.setLineDash([6 * dpr, 4 * dpr]); g.stroke();
    }

    legend(by) {
      const box = document.getElementById("map-legend");
      const items = by === "decision" ? [["accepted", ACC], ["rejected", REJ]]
        : by === "confidence" ? [["0", ramp(0)], ["0.5", ramp(0.5)], ["1", ramp(1)]]
        : by === "label" ? [["no label", FAINT], ["labelled accept", ACC], ["labelled reject", REJ]]
        : this.ctx.labels().map((name, i) => [name, PALETTE[i]]);
      box.replaceChildren(...items.map(([text, c]) => {
        const span = document.createElement("span");
        const dot = document.createElement("i");
        dot.style.background = `rgb(${c[0]},${c[1]},${c[2]})`;
        span.append(dot, text);
        return span;
      }));
    }

    // -- hover ----------------------------------------------------------------------------------

    nearest(px, py, radius = 8) {
      if (!this.grid) this.buildGrid();
      const [x, y] = this.unproject(px, py), r = radius / (this.size().rect.width / (this.view.span / this.view.zoom));
      const { x0, y0, cell, cols, rows, buckets } = this.grid;
      let best = -1, bestD = r * r;
      const c0 = Math.max(0, Math.floor((x - r - x0) / cell)), c1 = Math.min(cols - 1, Math.floor((x + r - x0) / cell));
      const r0 = Math.max(0, Math.floor((y - r - y0) / cell)), r1 = Math.min(rows - 1, Math.floor((y + r - y0) / cell));
      for (let cy = r0; cy <= r1; cy++) for (let cx = c0; cx <= c1; cx++) {
        for (const i of buckets[cy * cols + cx] || []) {
          const dx = this.xy[2 * i] - x, dy = this.xy[2 * i + 1] - y, d = dx * dx + dy * dy;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
      return best;
    }

    buildGrid() {
      const [x0, y0, x1, y1] = this.info.bounds, cols = 256;
      const cell = Math.max(x1 - x0, y1 - y0, 1e-6) / (cols - 1), rows = cols, buckets = new Array(cols * rows);
      for (let i = 0; i < this.info.count; i++) {
        const k = Math.floor((this.xy[2 * i + 1] - y0) / cell) * cols + Math.floor((this.xy[2 * i] - x0) / cell);
        (buckets[k] || (buckets[k] = [])).push(i);
      }
      this.grid = { x0, y0, cell, cols, rows, buckets };
    }

    async hover(px, py) {
      const i = this.nearest(px, py);
      this.hovered = i;
      if (i < 0) { this.tip.hidden = true; return; }
      let id = this.ids.get(i);
      if (!id) {
        id = (await this.ctx.api("/api/map/ids", new URLSearchParams({ key: this.info.key, i }))).ids[0];
        this.ids.set(i, id);
      }
      if (this.hovered !== i) return;
      const conf = this.values[`confidence:${this.ctx.state().head}`];
      this.tip.querySelector("img").src = `/api/thumb/${id}`;
      this.tip.querySelector("span").textContent = conf ? `confidence ${conf[i].toFixed(3)}` : id.slice(0, 12);
      this.tip.dataset.id = id;
      const [x, y] = this.project(i);
      this.tip.style.left = `${Math.min(x + 14, this.size().rect.width - 180)}px`;
      this.tip.style.top = `${Math.max(4, y - 170)}px`;
      this.tip.hidden = false;
    }

    // -- pointer: pan, zoom, lasso --------------------------------------------------------------

    wire() {
      const c = this.overlay;
      const at = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
      c.addEventListener("mousedown", (e) => {
        const [px, py] = at(e);
        if (e.shiftKey || this.lassoMode) this.lasso = [this.unproject(px, py)];
        else this.drag = { px, py, cx: this.view.cx, cy: this.view.cy };
      });
      window.addEventListener("mousemove", (e) => {
        if (!this.info || !this.info.count || document.getElementById("map").hidden) return;
        const [px, py] = at(e);
        if (this.lasso) { this.lasso.push(this.unproject(px, py)); this.drawOverlay(); return; }
        if (this.drag) {
          const [x0, y0] = this.unproject(this.drag.px, this.drag.py), [x1, y1] = this.unproject(px, py);
          this.view.cx -= x1 - x0; this.view.cy -= y1 - y0;
          this.drag.px = px; this.drag.py = py;
          this.draw();
          return;
        }
        if (e.target === c) this.hover(px, py); else this.tip.hidden = true;
      });
      window.addEventListener("mouseup", () => {
        if (this.lasso) { const path = this.lasso; this.lasso = null; this.select(path); }
        this.drag = null;
      });
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        const [px, py] = at(e), [x0, y0] = this.unproject(px, py);
        this.view.zoom = Math.max(0.5, Math.min(2000, this.view.zoom * Math.exp(-e.deltaY * 0.0015)));
        const [x1, y1] = this.unproject(px, py);
        this.view.cx += x0 - x1; this.view.cy += y0 - y1;
        this.draw();
      }, { passive: false });
      c.addEventListener("mouseleave", () => { this.tip.hidden = true; });
      this.tip.addEventListener("click", () => this.tip.dataset.id && this.ctx.openDetail(this.tip.dataset.id));
      document.getElementById("map-lasso").addEventListener("click", () => this.setLasso(!this.lassoMode));
      document.getElementById("map-fit").addEventListener("click", () => { this.fit(); this.draw(); });
      document.getElementById("map-clear").addEventListener("click", () => this.clear());
      document.getElementById("map-open").addEventListener("click", () => this.poly && this.ctx.openSelection(this.polyText()));
      document.getElementById("map-queue").addEventListener("click", () => this.poly && this.ctx.queueSelection(this.polyText()));
      document.getElementById("map-accept").addEventListener("click", () => this.label("accept"));
      document.getElementById("map-reject").addEventListener("click", () => this.label("reject"));
      window.addEventListener("resize", () => { if (this.ready) this.draw(); });
    }

    setLasso(on) {
      this.lassoMode = on;
      document.getElementById("map-lasso").setAttribute("aria-pressed", String(on));
      this.overlay.classList.toggle("lasso", on);
    }

    polyText() { return this.poly.map(([x, y]) => `${+x.toPrecision(7)},${+y.toPrecision(7)}`).join(","); }

    async select(path) {
      const step = Math.max(1, Math.ceil(path.length / 400));
      this.poly = path.filter((_, k) => k % step === 0);
      this.drawOverlay();
      if (this.poly.length < 3) return this.clear();
      const s = this.ctx.state();
      const page = await this.ctx.api("/api/map/selection", new URLSearchParams(
        { key: this.info.key, poly: this.polyText(), head: s.head, threshold: s.t, limit: 1 }));
      document.getElementById("map-count").textContent = `${page.covered.toLocaleString("en-US")} images in the lasso`;
      document.getElementById("map-count").dataset.n = page.covered;
      document.getElementById("map-selection").hidden = false;
    }

    clear() {
      this.poly = null; this.lasso = null;
      document.getElementById("map-selection").hidden = true;
      this.drawOverlay();
    }

    async label(label) {
      if (!this.poly) return;
      try {
        const result = await this.ctx.post("/api/map/label", { key: this.info.key, poly: this.polyText(), label });
        this.ctx.labelled(result.counts);
        delete this.values.label;
        if (this.ctx.state().by === "label") await this.show();
        this.ctx.toast(`labelled ${label}: ${result.written} images`);
      } catch (err) {
        this.ctx.toast(err.message, true);
      }
    }
  }

  window.FaramirMap = MapView;
})();
