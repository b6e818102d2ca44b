// The cxc browser demo: pick or drop an image, classify it with a package built by cxc.
// `cxc serve OUT...` lists the packages in /models.json; the page runs WebGPU when the browser
// has a usable adapter and a webgpu build is served, otherwise WebAssembly, and says why.
// ?backend=wasm|webgpu forces one; ?model=NAME picks a model when several are served.
// The model runs in a Web Worker (load({ worker: true })): the page stays responsive, and the
// longest main-thread task during a run is shown. Weights come from Cache Storage after the first
// visit (the page says which). Images go to classify() as they are: a File, several Files (one
// batch), or a URL. No framework and no build step: this file is served as it is.

const params = new URLSearchParams(location.search);
const forcedBackend = params.get('backend');
const $ = (id) => document.getElementById(id);

/** @type {{ model: any, info: any, loadMs: number } | undefined} */
let current;
let lastImages;
let generation = 0;

/** Main-thread tasks over 50 ms, as the browser reports them (none while the worker computes). */
const longTasks = [];
if (PerformanceObserver.supportedEntryTypes?.includes('longtask')) {
  new PerformanceObserver((list) => longTasks.push(...list.getEntries().map((e) => ({ start: e.startTime, duration: e.duration })))).observe({ type: 'longtask' });
}
const longestTask = (from, to) => Math.max(0, ...longTasks.filter((t) => t.start + t.duration > from && t.start < to).map((t) => t.duration));

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  setState('error');
}

function clearError() {
  $('error').hidden = true;
}

const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const count = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n));
const ms = (value) => (value >= 100 ? value.toFixed(0) : value.toFixed(1));

/** Packages of the same model, by name without the -wasm / -webgpu suffix. */
function groupModels(models) {
  const groups = new Map();
  for (const info of models) {
    const key = info.name.replace(/-(wasm|webgpu)$/, '');
    if (!groups.has(key)) groups.set(key, { key, wasm: undefined, webgpu: undefined });
    groups.get(key)[info.target] = info;
  }
  return groups;
}

/** Which package to run, and why (shown under the backend's name). */
async function chooseBackend(group) {
  const { wasm, webgpu } = group;
  if (forcedBackend === 'wasm' || forcedBackend === 'webgpu') {
    const info = group[forcedBackend];
    if (!info) throw new Error(`?backend=${forcedBackend} asks for a ${forcedBackend} build of ${group.key}, but none is served (cxc serve OUT_WASM OUT_WEBGPU serves both)`);
    return { info, reason: `chosen by ?backend=${forcedBackend}`, fallback: false };
  }
  if (!webgpu) return { info: wasm, reason: 'WebGPU not tried: only a WebAssembly build of this model is served', fallback: false };
  const unavailable = await webGpuUnavailable();
  if (unavailable && wasm) return { info: wasm, reason: `WebGPU unavailable: ${unavailable}`, fallback: true };
  if (unavailable) throw new Error(`WebGPU unavailable (${unavailable}) and no WebAssembly build of ${group.key} is served`);
  return { info: webgpu, reason: wasm ? 'WebGPU is available here, so the GPU build runs' : 'only a WebGPU build of this model is served', fallback: false };
}

/** Why WebGPU cannot run here, or undefined when it can. */
async function webGpuUnavailable() {
  if (!window.isSecureContext) return 'the page is not a secure context (use https or localhost)';
  if (!('gpu' in navigator)) return 'this browser has no WebGPU (navigator.gpu is missing)';
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return 'no GPU adapter (requestAdapter() returned null: no GPU, a blocked driver, or WebGPU turned off)';
  } catch (error) {
    return `requestAdapter() failed: ${error.message}`;
  }
  return undefined;
}

async function loadPackage(info, myGeneration) {
  if (!info.bundledWeights) {
    throw new Error(`${info.name} was built from a bare config and has no weights to run: build it from a model folder with model.safetensors`);
  }
  const module = await import(new URL(`${info.path}index.js`, location.href).href);
  const threads = info.target === 'wasm' && window.crossOriginIsolated ? Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8)) : 1;
  const started = performance.now();
  const model = await module.load({
    worker: true,
    threads,
    onProgress: ({ loaded, total }) => {
      if (myGeneration !== generation) return;
      const fraction = total > 0 ? loaded / total : 0;
      $('load-fill').style.width = `${(fraction * 100).toFixed(1)}%`;
      $('load-text').textContent = `Loading weights · ${mib(loaded)} of ${mib(total)}`;
    },
  });
  return { model, info, loadMs: performance.now() - started };
}

function showModel(group) {
  const info = group.webgpu ?? group.wasm;
  const version = info.modelType === 'convnextv2' ? 'ConvNeXt V2' : 'ConvNeXt';
  $('model-name').textContent = group.key;
  $('model-summary').textContent = `${version} · channels ${info.hiddenSizes.join(' / ')} · depths ${info.depths.join(' / ')}`;
  const facts = [
    [count(info.parameters), 'parameters'],
    [String(info.numLabels), 'labels'],
    [`${info.imageSize}×${info.imageSize}`, 'input'],
    [mib(info.weightsBytes), `weights (${info.weightsDtype})`],
  ];
  $('facts').replaceChildren(...facts.map(([value, what]) => {
    const li = document.createElement('li');
    const b = document.createElement('b');
    b.textContent = value;
    li.append(b, ` ${what}`);
    return li;
  }));
}

function showBackend(choice, model, loadMs) {
  const badge = $('backend-badge');
  badge.dataset.backend = choice.info.target;
  badge.textContent = choice.info.target === 'webgpu' ? 'WebGPU' : 'WASM';
  $('backend-description').textContent = model.backend;
  const reason = $('backend-reason');
  reason.textContent = choice.reason;
  reason.classList.toggle('fallback', choice.fallback);
  const fromCache = model.weightsFrom === 'cache';
  $('load-text').textContent = `Ready in ${(loadMs / 1000).toFixed(1)} s · ${mib(choice.info.weightsBytes)} of weights ${fromCache ? 'from the browser cache' : 'downloaded'}`;
  const weights = $('weights-from');
  weights.dataset.from = model.weightsFrom;
  weights.textContent = fromCache ? 'Weights from Cache Storage: nothing downloaded' : 'Weights downloaded, now kept in Cache Storage for the next visit';
  weights.hidden = false;
  $('footer-target').textContent = choice.info.target === 'webgpu' ? 'WebGPU' : 'WebAssembly';
  document.body.dataset.backend = choice.info.target;
}

async function selectGroup(group) {
  const myGeneration = ++generation;
  clearError();
  setState('loading');
  current?.model.dispose();
  current = undefined;
  showModel(group);
  $('backend-badge').dataset.backend = '';
  $('backend-badge').textContent = '…';
  $('backend-description').textContent = 'Choosing a backend';
  $('backend-reason').textContent = '';
  $('load-fill').style.width = '0';
  $('load-text').textContent = 'Starting…';
  let choice = await chooseBackend(group);
  let loaded;
  try {
    loaded = await loadPackage(choice.info, myGeneration);
  } catch (error) {
    // WebGPU can still fail after an adapter was found (device limits, lost device): fall back.
    if (choice.info.target !== 'webgpu' || !group.wasm || forcedBackend) throw error;
    choice = { info: group.wasm, reason: `WebGPU failed to start: ${error.message}`, fallback: true };
    loaded = await loadPackage(choice.info, myGeneration);
  }
  if (myGeneration !== generation) {
    loaded.model.dispose();
    return;
  }
  current = loaded;
  showBackend(choice, loaded.model, loaded.loadMs);
  setState('ready');
  if (lastImages) await classify(lastImages);
}

function showResults(top, id2label) {
  const best = top[0]?.score || 1;
  const labels = (index) => id2label[String(index)];
  const rows = top.map(({ index, score }, rank) => {
    const li = document.createElement('li');
    li.dataset.index = String(index);
    li.dataset.label = labels(index);
    li.dataset.score = String(score);
    const rankEl = Object.assign(document.createElement('span'), { className: 'rank', textContent: String(rank + 1) });
    const label = Object.assign(document.createElement('span'), { className: 'label', textContent: labels(index), title: labels(index) });
    const pct = Object.assign(document.createElement('span'), { className: 'pct', textContent: `${(score * 100).toFixed(score >= 0.1 ? 1 : 2)}%` });
    const bar = document.createElement('div');
    bar.className = 'bar';
    const fill = document.createElement('i');
    bar.append(fill);
    li.append(rankEl, label, pct, bar);
    // Bars are drawn relative to the top score, so that small scores stay visible.
    requestAnimationFrame(() => (fill.style.width = `${Math.max(2, (score / best) * 100).toFixed(1)}%`));
    return li;
  });
  $('results').replaceChildren(...rows);
}

function showTimings(t) {
  const set = (id, value) => ($(id).innerHTML = `${ms(value)}<small>ms</small>`);
  set('t-handoff', t.handoff);
  set('t-classify', t.classify);
  set('t-blocked', t.blocked);
}

/** The other images of a batch: each one's best label. */
function showBatch(names, tops, id2label) {
  const rows = tops.slice(1).map((top, i) => {
    const li = document.createElement('li');
    li.dataset.index = String(top[0].index);
    li.textContent = `${names[i + 1]}: ${id2label[String(top[0].index)]} (${(top[0].score * 100).toFixed(1)}%)`;
    return li;
  });
  $('batch').replaceChildren(...rows);
  $('batch-card').hidden = rows.length === 0;
}

function showPreview(images) {
  const first = images[0];
  const key = typeof first === 'string' ? first : first.name + first.size + first.lastModified;
  const preview = $('preview');
  if (preview.dataset.key === key) return;
  if (preview.src.startsWith('blob:')) URL.revokeObjectURL(preview.src);
  preview.src = typeof first === 'string' ? first : URL.createObjectURL(first);
  preview.dataset.key = key;
  preview.hidden = false;
  $('drop-empty').hidden = true;
  $('drop').classList.add('has-image');
  const describe = (image) => (typeof image === 'string' ? image : `${image.name || 'pasted image'} · ${(image.size / 1024).toFixed(0)} KiB`);
  $('image-meta').textContent = images.length > 1 ? `${describe(first)} and ${images.length - 1} more, classified as one batch` : describe(first);
}

/** Files or a URL straight to classify(): the worker decodes, preprocesses and runs them. */
async function classify(images) {
  lastImages = images;
  showPreview(images);
  if (!current) return; // classified once the model is loaded
  const { model } = current;
  clearError();
  setState('running');
  $('again').disabled = true;
  try {
    const started = performance.now();
    const pending = model.classify(images, { topK: 5 });
    const handoff = performance.now() - started; // what the page itself spent before the worker took over
    const tops = await pending;
    const finished = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 0)); // let the long-task observer report
    showResults(tops[0], model.config.id2label);
    showBatch(images.map((image) => (typeof image === 'string' ? image : image.name)), tops, model.config.id2label);
    showTimings({ handoff, classify: finished - started, blocked: longestTask(started, finished) });
    setState('done');
  } catch (error) {
    showError(error.message ?? String(error));
  } finally {
    $('again').disabled = false;
  }
}

function wireInputs() {
  const drop = $('drop');
  $('file').addEventListener('change', (event) => {
    const files = [...(event.target.files ?? [])];
    if (files.length > 0) classify(files);
  });
  $('url-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const url = $('url').value.trim();
    if (url) classify([url]);
  });
  drop.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const files = [...(event.dataTransfer?.files ?? [])].filter((f) => f.type.startsWith('image/'));
    if (files.length > 0) classify(files);
  });
  document.addEventListener('paste', (event) => {
    const files = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith('image/'));
    if (files.length > 0) classify(files);
  });
  $('again').addEventListener('click', () => lastImages && classify(lastImages));
}

async function main() {
  wireInputs();
  const response = await fetch('models.json');
  if (!response.ok) throw new Error(`models.json: HTTP ${response.status} (serve this page with \`npx cxc serve OUT\`)`);
  const { models } = await response.json();
  if (models.length === 0) throw new Error('no model is served: npx cxc serve OUT_WASM [OUT_WEBGPU]');
  const groups = groupModels(models);
  const wanted = params.get('model');
  const group = (wanted && (groups.get(wanted) ?? [...groups.values()].find((g) => g.wasm?.name === wanted || g.webgpu?.name === wanted))) || groups.values().next().value;
  if (groups.size > 1) {
    const select = $('model-select');
    select.replaceChildren(...[...groups.keys()].map((key) => Object.assign(document.createElement('option'), { value: key, textContent: key })));
    select.value = group.key;
    select.addEventListener('change', () => selectGroup(groups.get(select.value)).catch((error) => showError(error.message)));
    $('model-picker').hidden = false;
  }
  await selectGroup(group);
}

main().catch((error) => showError(error.message ?? String(error)));
