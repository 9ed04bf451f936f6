// The page at GET /: upload an image to POST /predict and draw the answer. No framework, no
// network access beyond this server. Colours and alpha are those of maskrt predict
// (runtime/overlay.py), so a picture and the page look alike.
"use strict";

const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [23, 190, 207], [227, 119, 194], [188, 189, 34], [140, 86, 75], [127, 127, 127],
];
const ALPHA = 0.5;
const KEY_STORE = "maskrt-api-key";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let current = null; // {name, answer, roundTripMs, bitmap, masks}
let choices = []; // {name, version (null: the newest), model (its GET /v1/model)}

const colour = (i) => PALETTE[i % PALETTE.length];
const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;
const inkOn = ([r, g, b]) => (0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff");
const authHeaders = () => (apiKey ? { "X-API-Key": apiKey } : {});

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setState(state, status = "") {
  document.body.dataset.state = state;
  $("status").textContent = status;
}

// {code, text}: "401 unauthorized: missing API key" from the server's {"error": {"code",
// "message"}} answer.
async function failure(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    if (error && error.code) {
      return { code: error.code, text: `${response.status} ${error.code}: ${error.message}` };
    }
  } catch (_) {
    // not the server's error JSON (a proxy's page, say): show the start of it
  }
  const start = `${response.status} ${response.statusText} ${text.slice(0, 200)}`;
  return { code: "", text: start.trim() };
}

const describe = (m) =>
  `${m.name} ${m.version} · ${m.backend} on ${m.device} · classes: ${m.classes.slice(1).join(", ")}`;

function chosen() {
  return choices[Number($("choice").value)] || null;
}

// The select's options: each ready model, and each of its versions when it has several ready;
// the one chosen before if it still serves, else the server's default model, else the first.
function showChoices(rows, preferred) {
  const before = chosen();
  const ready = rows.filter((r) => r.model);
  const versions = (name) => ready.filter((r) => r.name === name).length;
  choices = ready.map((r) => ({
    name: r.name, version: versions(r.name) > 1 ? r.version : null, model: r.model,
  }));
  const same = (a) => (b) => b.name === a.name && b.version === a.version;
  let index = before ? choices.findIndex(same(before)) : -1;
  if (index < 0 && preferred) {
    index = choices.findIndex(
      (c) => c.name === preferred.name && c.model.model_version === preferred.model_version,
    );
  }
  $("choice").replaceChildren(
    ...choices.map((c, i) => new Option(c.version ? `${c.name} version ${c.version}` : c.name, i)),
  );
  $("choice").value = String(Math.max(index, 0));
  $("choice").hidden = choices.length < 2;
  $("model").textContent = choices.length ? describe(chosen().model) : "no model is serving";
}

// GET /v1/model names the default model (400 model_required: several serve and none is the
// default), GET /v1/models every version and whether it is ready.
async function loadModel() {
  let preferred;
  let listed;
  try {
    [preferred, listed] = await Promise.all(
      ["v1/model", "v1/models"].map((path) => fetch(path, { headers: authHeaders() })),
    );
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  if (listed.status === 401) {
    $("key-box").hidden = false;
    $("model").textContent = "this server needs an API key";
    showError((await failure(listed)).text);
    $("api-key").focus();
    return;
  }
  if (preferred.status === 503) {
    const wait = Number(preferred.headers.get("Retry-After")) || 5;
    $("model").textContent = `${(await failure(preferred)).text} (asking again in ${wait} s)`;
    setTimeout(loadModel, wait * 1000);
    return;
  }
  if (!listed.ok) {
    showError((await failure(listed)).text);
    return;
  }
  const { models } = await listed.json();
  showChoices(models, preferred.ok ? await preferred.json() : null);
}

// COCO compressed RLE (pycocotools' rleFrString): run lengths, first a run of 0s, column-major.
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A mask as a bitmap of its bounding rectangle: {x0, y0, w, h, bits, area}.
function decodeMask(mask) {
  const h = mask.size[0];
  const counts = rleCounts(mask.counts);
  const runs = [];
  let index = 0;
  let area = 0;
  let [x0, x1, y0, y1] = [Infinity, -1, Infinity, -1];
  counts.forEach((n, i) => {
    if (i % 2 === 1 && n > 0) {
      const last = index + n - 1;
      const [cs, ce] = [Math.floor(index / h), Math.floor(last / h)];
      x0 = Math.min(x0, cs);
      x1 = Math.max(x1, ce);
      [y0, y1] = cs === ce ? [Math.min(y0, index % h), Math.max(y1, last % h)] : [0, h - 1];
      runs.push([index, index + n]);
      area += n;
    }
    index += n;
  });
  if (!area) return { x0: 0, y0: 0, w: 0, h: 0, bits: new Uint8Array(0), area: 0 };
  const [w, bh] = [x1 - x0 + 1, y1 - y0 + 1];
  const bits = new Uint8Array(w * bh);
  for (const [start, end] of runs) {
    for (let i = start; i < end; i += 1) bits[(i % h - y0) * w + Math.floor(i / h) - x0] = 1;
  }
  return { x0, y0, w, h: bh, bits, area };
}

// Each mask blended in at ALPHA, its outline in the solid colour.
function paintMask(pixels, width, m, [r, g, b]) {
  const inside = (x, y) => x >= 0 && y >= 0 && x < m.w && y < m.h && m.bits[y * m.w + x] === 1;
  for (let y = 0; y < m.h; y += 1) {
    for (let x = 0; x < m.w; x += 1) {
      if (!inside(x, y)) continue;
      const o = ((m.y0 + y) * width + m.x0 + x) * 4;
      const edge = !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1));
      const a = edge ? 1 : ALPHA;
      pixels[o] = Math.round(pixels[o] * (1 - a) + r * a);
      pixels[o + 1] = Math.round(pixels[o + 1] * (1 - a) + g * a);
      pixels[o + 2] = Math.round(pixels[o + 2] * (1 - a) + b * a);
    }
  }
}

function render() {
  const { answer, bitmap, masks } = current;
  const [W, H] = [answer.width, answer.height];
  const threshold = Number($("score").value);
  $("score-value").textContent = threshold.toFixed(2);
  const shown = answer.detections.map((d, i) => ({ d, i })).filter(({ d }) => d.score >= threshold);

  const canvas = $("view");
  canvas.width = W;
  canvas.height = H;
  // small images shown 2-4 times larger, pixel for pixel
  const zoom = Math.min(4, Math.max(1, Math.floor(640 / Math.max(W, H))));
  canvas.style.width = `${W * zoom}px`;
  canvas.style.imageRendering = zoom > 1 ? "pixelated" : "auto";
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const drawable = bitmap && bitmap.width === W && bitmap.height === H;
  if (drawable) {
    ctx.drawImage(bitmap, 0, 0);
  } else {
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, W, H);
  }
  $("note").hidden = drawable;
  $("note").textContent = "This browser cannot show this image; the detections are drawn on grey.";

  const image = ctx.getImageData(0, 0, W, H);
  for (const { i } of shown) {
    if (masks[i] && masks[i].area) paintMask(image.data, W, masks[i], colour(i));
  }
  ctx.putImageData(image, 0, 0);

  const lineWidth = Math.max(1, Math.round(Math.max(W, H) / 400));
  const fontSize = Math.max(10, Math.round(Math.max(W, H) / 45));
  ctx.lineWidth = lineWidth;
  ctx.font = `${fontSize}px sans-serif`;
  ctx.textBaseline = "top";
  for (const { d, i } of shown) {
    const [x1, y1, x2, y2] = d.box;
    const c = colour(i);
    ctx.strokeStyle = css(c);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const [tw, th] = [ctx.measureText(text).width + 4, fontSize + 4];
    const ty = y1 - th >= 0 ? y1 - th : y1;
    ctx.fillStyle = css(c);
    ctx.fillRect(x1, ty, tw, th);
    ctx.fillStyle = inkOn(c);
    ctx.fillText(text, x1 + 2, ty + 2);
  }

  const rows = shown.map(({ d, i }) => {
    const tr = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = css(colour(i));
    const cells = [
      swatch, String(i), d.label, String(d.class_id), d.score.toFixed(3),
      d.box.map((v) => v.toFixed(1)).join(", "), masks[i] ? String(masks[i].area) : "–",
    ];
    for (const cell of cells) {
      const td = document.createElement("td");
      td.append(cell);
      tr.append(td);
    }
    return tr;
  });
  $("detections").tBodies[0].replaceChildren(...rows);
  $("summary").textContent =
    `${shown.length} of ${answer.detections.length} detections in ${current.name} ` +
    `by ${answer.model.name} version ${answer.model.model_version}`;
  const t = answer.timings_ms;
  const server = Object.values(t).reduce((a, b) => a + b, 0);
  const parts = Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(" · ");
  $("latency").textContent =
    `server ${server.toFixed(1)} ms (${parts}) · round trip ${current.roundTripMs.toFixed(0)} ms`;
  $("result").hidden = false;
}

// Every detection (the slider filters them here, without asking again) of the chosen model.
function query() {
  const q = new URLSearchParams({ score_threshold: "0" });
  const c = chosen();
  if (c) q.set("model", c.name);
  if (c && c.version) q.set("version", c.version);
  return q;
}

async function predict(file) {
  showError("");
  setState("busy", `${file.name}: waiting for the server…`);
  const form = new FormData();
  form.append("image", file, file.name);
  const started = performance.now();
  let response;
  try {
    response = await fetch(`predict?${query()}`, {
      method: "POST", body: form, headers: authHeaders(),
    });
  } catch (e) {
    showError(`${file.name}: cannot reach the server: ${e.message}`);
    setState("error");
    return;
  }
  const roundTripMs = performance.now() - started;
  if (!response.ok) {
    if (response.status === 401) $("key-box").hidden = false;
    const { code, text } = await failure(response);
    showError(`${file.name}: ${text}`);
    setState("error");
    if (code === "unknown_model") loadModel(); // unloaded meanwhile: the models serving now
    return;
  }
  const answer = await response.json();
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    bitmap = null; // a format the server reads and this browser does not (TIFF): drawn on grey
  }
  const masks = answer.detections.map((d) => (d.mask ? decodeMask(d.mask) : null));
  current = { name: file.name, answer, roundTripMs, bitmap, masks };
  render();
  setState("done");
}

function pick(files) {
  if (files && files.length) predict(files[0]);
}

$("file").addEventListener("change", (e) => {
  pick(e.target.files);
  e.target.value = ""; // choosing the same file again uploads it again
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer.files);
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") $("file").click();
});
$("score").addEventListener("input", () => {
  if (current) render();
});
$("key-box").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORE, apiKey);
  showError("");
  loadModel();
});
$("choice").addEventListener("change", () => {
  $("model").textContent = describe(chosen().model);
});

loadModel();
