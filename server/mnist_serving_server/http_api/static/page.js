// The drawing page: plain JavaScript, no build step, no external resource.
//
// It speaks KServe V2 REST to the server that served it:
//   POST /v2/repository/index                -> the model and version picker
//   GET  /v2/models/{m}/versions/{v}         -> the input and output names, shapes
//   POST /v2/models/{m}/versions/{v}/infer   -> UINT8 pixels in; the classification
//        extension ("score:index:label" strings) out, so class names come from the model
//   POST /v2/models/{m}_features/versions/{v}/infer -> conv1 [1,32,26,26] (binary output)
//
// The drawing is turned into MNIST's 28x28 here, with the steps of the server's
// core/images.py (docs/preprocessing.md): so the preview shows exactly the pixels the
// model received (docs/drawing_page.md explains the choice).
"use strict";

(function () {
  const MNIST_SIDE = 28;
  const DIGIT_BOX_SIDE = 20;
  const CENTRE_OF_MASS_INDEX = 14.0;
  const INK_THRESHOLD = 32;
  const MIN_INK_CONTRAST = 16;
  const MAD_TO_SIGMA = 1.4826;
  const NOISE_SIGMAS = 5.0;
  const RESIZE_REDUCING_GAP = 3.0;
  const LANCZOS_SUPPORT = 3.0;
  const THROTTLE_MS = 100;
  const FEATURES_SUFFIX = "_features";
  const PROBABILITIES_OUTPUT = "probabilities";
  const STROKE_WIDTH_FRACTION = 1 / 14;

  const pad = document.getElementById("pad");
  const padContext = pad.getContext("2d", { willReadFrequently: true });
  const preview = document.getElementById("preview");
  const modelSelect = document.getElementById("model-select");
  const clearButton = document.getElementById("clear-button");
  const predictionEl = document.getElementById("prediction");
  const confidenceEl = document.getElementById("confidence");
  const barsEl = document.getElementById("probabilities");
  const featureGrid = document.getElementById("feature-maps");
  const featuresInfo = document.getElementById("features-info");
  const modelInfo = document.getElementById("model-info");
  const statusEl = document.getElementById("status");

  // What the page knows: the index, the chosen model, and the request in flight.
  const state = {
    index: [],
    model: null, // {name, version, input, shape, output, classes, features}
    inFlight: false,
    pending: false,
    lastSent: 0,
    timer: null,
    drawing: false,
    hasInk: false,
    inferences: 0,
    lastPixels: null,
    lastAnswer: null,
  };

  // ---------------------------------------------------------------- status and errors

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.dataset.kind = kind || "info";
  }

  async function v2(method, path, body) {
    const init = { method: method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const headerLength = response.headers.get("Inference-Header-Content-Length");
    if (response.ok && headerLength !== null) {
      return parseBinaryResponse(await response.arrayBuffer(), Number(headerLength));
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (error) {
      payload = null;
    }
    if (!response.ok) {
      const message = payload && payload.error ? payload.error : response.statusText;
      throw new Error(method + " " + path + ": " + response.status + " " + message);
    }
    return payload;
  }

  // Triton's binary tensor data extension: a JSON header, then each binary output's raw
  // little-endian bytes, in the order of the outputs that carry binary_data_size.
  function parseBinaryResponse(buffer, headerLength) {
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 0, headerLength)));
    let offset = headerLength;
    for (const output of header.outputs || []) {
      const parameters = output.parameters || {};
      if (parameters.binary_data_size === undefined) continue;
      const size = Number(parameters.binary_data_size);
      if (output.datatype === "FP32") {
        const bytes = buffer.slice(offset, offset + size);
        output.data = new Float32Array(bytes);
      } else {
        output.data = new Uint8Array(buffer, offset, size);
      }
      offset += size;
    }
    return header;
  }

  // ---------------------------------------------------------------- model picker

  function isFeaturesModel(name) {
    return name.endsWith(FEATURES_SUFFIX);
  }

  function readyVersions(name) {
    return state.index
      .filter((entry) => entry.name === name && entry.state === "READY" && entry.version !== "")
      .map((entry) => entry.version);
  }

  async function loadRepository() {
    const index = await v2("POST", "/v2/repository/index", {});
    state.index = Array.isArray(index) ? index : [];
    modelSelect.replaceChildren();
    const entries = state.index
      .filter((entry) => !isFeaturesModel(entry.name))
      .sort((a, b) => a.name.localeCompare(b.name) || Number(b.version) - Number(a.version));
    let preferred = null;
    for (const entry of entries) {
      const option = document.createElement("option");
      const ready = entry.state === "READY" && entry.version !== "";
      option.value = ready ? entry.name + "/" + entry.version : "";
      option.textContent =
        entry.name + (entry.version ? " · version " + entry.version : "") +
        (ready ? "" : " (" + (entry.state || "not loaded") + (entry.reason ? ": " + entry.reason : "") + ")");
      option.disabled = !ready;
      modelSelect.append(option);
      if (ready && (preferred === null || (entry.name === "mnist" && !preferred.startsWith("mnist/")))) {
        preferred = option.value;
      }
    }
    if (preferred === null) {
      setStatus("No model of the repository is ready to serve.", "error");
      return;
    }
    modelSelect.value = preferred;
    await chooseModel(preferred);
  }

  async function chooseModel(value) {
    const [name, version] = value.split("/");
    const base = "/v2/models/" + encodeURIComponent(name) + "/versions/" + encodeURIComponent(version);
    const metadata = await v2("GET", base);
    const input = metadata.inputs[0];
    const outputs = metadata.outputs || [];
    const output = outputs.find((o) => o.name === PROBABILITIES_OUTPUT) || outputs[0];
    const classes = Number(output.shape[output.shape.length - 1]);
    const inputShape = input.shape.map(Number);
    const shape = [1].concat(inputShape.slice(1));
    const pixelsPerImage = shape.slice(1).reduce((a, b) => a * b, 1);
    if (pixelsPerImage !== MNIST_SIDE * MNIST_SIDE) {
      throw new Error(name + " takes " + JSON.stringify(input.shape) + ", not a 28x28 image");
    }
    state.model = {
      name: name,
      version: version,
      input: input.name,
      datatype: input.datatype,
      shape: shape,
      output: output.name,
      classes: classes > 0 ? classes : 10,
      features: null,
    };
    const featuresName = name + FEATURES_SUFFIX;
    if (readyVersions(featuresName).includes(version)) {
      const featuresBase = "/v2/models/" + encodeURIComponent(featuresName) + "/versions/" + version;
      const featuresMetadata = await v2("GET", featuresBase);
      const featuresOutput = featuresMetadata.outputs[0];
      state.model.features = {
        name: featuresName,
        version: version,
        input: featuresMetadata.inputs[0].name,
        output: featuresOutput.name,
        channels: Number(featuresOutput.shape[1]),
        side: Number(featuresOutput.shape[2]),
      };
      featuresInfo.textContent =
        "The " + state.model.features.channels + " feature maps of the first convolution (+ ReLU) " +
        "for your drawing, from " + featuresName + " version " + version +
        " (cut out of " + name + " version " + version + "). Brighter: stronger response.";
    } else {
      featuresInfo.textContent =
        "No " + featuresName + " version " + version + " in the repository: feature maps are " +
        "not available for this model (training writes it; docs/drawing_page.md).";
    }
    buildFeatureGrid(state.model.features ? state.model.features.channels : 0);
    buildBars(state.model.classes);
    modelInfo.textContent =
      name + " version " + version + ": " + input.name + " " + input.datatype + " " +
      JSON.stringify(input.shape) + " -> " + output.name + " " + JSON.stringify(output.shape);
    setStatus("Ready: draw a digit.", "info");
    if (state.hasInk) schedulePrediction(true);
  }

  // ---------------------------------------------------------------- drawing

  function clearPad() {
    padContext.fillStyle = "#000";
    padContext.fillRect(0, 0, pad.width, pad.height);
    state.hasInk = false;
  }

  function padPoint(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
    };
  }

  let lastPoint = null;

  function strokeTo(point) {
    padContext.strokeStyle = "#fff";
    padContext.fillStyle = "#fff";
    padContext.lineWidth = pad.width * STROKE_WIDTH_FRACTION;
    padContext.lineCap = "round";
    padContext.lineJoin = "round";
    padContext.beginPath();
    if (lastPoint === null) {
      padContext.arc(point.x, point.y, padContext.lineWidth / 2, 0, 2 * Math.PI);
      padContext.fill();
    } else {
      padContext.moveTo(lastPoint.x, lastPoint.y);
      padContext.lineTo(point.x, point.y);
      padContext.stroke();
    }
    lastPoint = point;
    state.hasInk = true;
  }

  pad.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    state.drawing = true;
    lastPoint = null;
    strokeTo(padPoint(event));
    schedulePrediction(false);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!state.drawing) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) strokeTo(padPoint(each));
    schedulePrediction(false);
  });
  function endStroke(event) {
    if (!state.drawing) return;
    state.drawing = false;
    lastPoint = null;
    if (pad.hasPointerCapture(event.pointerId)) pad.releasePointerCapture(event.pointerId);
    schedulePrediction(true);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  clearButton.addEventListener("click", () => {
    clearPad();
    state.pending = false;
    resetAnswer();
    setStatus("Cleared: draw a digit.", "info");
  });
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") {
      clearButton.click();
    }
  });
  modelSelect.addEventListener("change", () => {
    chooseModel(modelSelect.value).catch((error) => setStatus(error.message, "error"));
  });

  // ---------------------------------------------------------------- throttled inference

  // At most one request in flight and one every THROTTLE_MS while drawing; the stroke's
  // end (pointerup) always gets an answer for the final drawing.
  function schedulePrediction(now) {
    if (!state.model || !state.hasInk) return;
    if (state.inFlight) {
      state.pending = true;
      return;
    }
    const wait = now ? 0 : Math.max(0, state.lastSent + THROTTLE_MS - performance.now());
    if (wait === 0) {
      if (state.timer !== null) {
        clearTimeout(state.timer);
        state.timer = null;
      }
      predict();
    } else if (state.timer === null) {
      state.timer = setTimeout(() => {
        state.timer = null;
        predict();
      }, wait);
    }
  }

  async function predict() {
    if (!state.model || !state.hasInk) return;
    state.inFlight = true;
    state.pending = false;
    state.lastSent = performance.now();
    const model = state.model;
    const pixels = preprocess(readGrey());
    state.lastPixels = pixels;
    drawPreview(pixels);
    const data = Array.from(pixels);
    const id = "draw-" + (state.inferences + 1);
    const requests = [
      v2("POST", inferPath(model.name, model.version), {
        id: id,
        inputs: [{ name: model.input, datatype: "UINT8", shape: model.shape, data: data }],
        outputs: [{ name: model.output, parameters: { classification: model.classes } }],
      }),
    ];
    if (model.features) {
      requests.push(
        v2("POST", inferPath(model.features.name, model.features.version), {
          id: id + "-features",
          inputs: [{ name: model.features.input, datatype: "UINT8", shape: model.shape, data: data }],
          outputs: [{ name: model.features.output, parameters: { binary_data: true } }],
        })
      );
    }
    const started = performance.now();
    try {
      const [answer, features] = await Promise.all(requests);
      if (state.model !== model || !state.hasInk) return; // cleared or switched meanwhile
      showAnswer(answer);
      if (features) drawFeatureMaps(features.outputs[0].data, model.features);
      state.inferences += 1;
      document.body.dataset.inferences = String(state.inferences);
      setStatus(
        model.name + " version " + answer.model_version + " answered in " +
          Math.round(performance.now() - started) + " ms (request " + answer.id + ")",
        "info"
      );
    } catch (error) {
      setStatus(error.message, "error");
    } finally {
      state.inFlight = false;
      if (state.pending) schedulePrediction(!state.drawing);
    }
  }

  function inferPath(name, version) {
    return "/v2/models/" + encodeURIComponent(name) + "/versions/" + encodeURIComponent(version) + "/infer";
  }

  // ---------------------------------------------------------------- showing the answer

  function buildBars(classes) {
    barsEl.replaceChildren();
    for (let i = 0; i < classes; i += 1) {
      const item = document.createElement("li");
      item.dataset.index = String(i);
      item.innerHTML =
        '<span class="name"></span><span class="track"><span class="fill"></span></span>' +
        '<span class="value">–</span>';
      item.querySelector(".name").textContent = String(i);
      barsEl.append(item);
    }
  }

  function resetAnswer() {
    predictionEl.textContent = "–";
    predictionEl.dataset.state = "empty";
    delete predictionEl.dataset.index;
    confidenceEl.textContent = "draw a digit";
    for (const item of barsEl.children) {
      item.classList.remove("top");
      item.querySelector(".fill").style.width = "0";
      item.querySelector(".value").textContent = "–";
      item.removeAttribute("aria-label");
    }
    const previewContext = preview.getContext("2d");
    previewContext.fillStyle = "#000";
    previewContext.fillRect(0, 0, MNIST_SIDE, MNIST_SIDE);
    for (const canvas of featureGrid.querySelectorAll("canvas")) {
      const context = canvas.getContext("2d");
      context.fillStyle = "#000";
      context.fillRect(0, 0, canvas.width, canvas.height);
    }
    state.lastAnswer = null;
  }

  // "score:index:label" (the label may itself hold colons; it may be missing).
  function parseClassification(text) {
    const first = text.indexOf(":");
    const second = text.indexOf(":", first + 1);
    const score = Number(text.slice(0, first));
    const index = Number(second < 0 ? text.slice(first + 1) : text.slice(first + 1, second));
    const label = second < 0 ? String(index) : text.slice(second + 1);
    return { score: score, index: index, label: label };
  }

  function showAnswer(answer) {
    const output = answer.outputs[0];
    const classes = output.data.map(parseClassification);
    const best = classes[0];
    predictionEl.textContent = best.label;
    predictionEl.dataset.state = "answered";
    predictionEl.dataset.index = String(best.index);
    confidenceEl.textContent = (100 * best.score).toFixed(1) + "% sure";
    for (const entry of classes) {
      const item = barsEl.children[entry.index];
      if (!item) continue;
      item.querySelector(".name").textContent = entry.label;
      item.querySelector(".fill").style.width = (100 * entry.score).toFixed(2) + "%";
      item.querySelector(".value").textContent = (100 * entry.score).toFixed(1) + "%";
      item.classList.toggle("top", entry.index === best.index);
      item.setAttribute("aria-label", entry.label + ": " + (100 * entry.score).toFixed(1) + " percent");
    }
    state.lastAnswer = classes;
  }

  function drawPreview(pixels) {
    const context = preview.getContext("2d");
    const image = context.createImageData(MNIST_SIDE, MNIST_SIDE);
    for (let i = 0; i < pixels.length; i += 1) {
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = pixels[i];
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    preview.dataset.ink = String(pixels.reduce((sum, value) => sum + value, 0));
  }

  function buildFeatureGrid(channels) {
    featureGrid.replaceChildren();
    const side = state.model && state.model.features ? state.model.features.side : 26;
    for (let c = 0; c < channels; c += 1) {
      const canvas = document.createElement("canvas");
      canvas.width = side;
      canvas.height = side;
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", "Feature map " + (c + 1) + " of " + channels);
      canvas.dataset.channel = String(c);
      featureGrid.append(canvas);
    }
  }

  // A perceptual dark-to-bright colour map (viridis' key colours, linearly interpolated).
  const COLOUR_STOPS = [
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
  ];
  function colour(t) {
    const position = Math.min(Math.max(t, 0), 1) * (COLOUR_STOPS.length - 1);
    const low = Math.floor(position);
    const high = Math.min(low + 1, COLOUR_STOPS.length - 1);
    const f = position - low;
    return COLOUR_STOPS[low].map((value, k) => Math.round(value + f * (COLOUR_STOPS[high][k] - value)));
  }

  function drawFeatureMaps(values, features) {
    const side = features.side;
    const area = side * side;
    let globalMax = 0;
    for (let i = 0; i < values.length; i += 1) globalMax = Math.max(globalMax, values[i]);
    const canvases = featureGrid.querySelectorAll("canvas");
    canvases.forEach((canvas, channel) => {
      const context = canvas.getContext("2d");
      const image = context.createImageData(side, side);
      let max = 0;
      for (let i = 0; i < area; i += 1) max = Math.max(max, values[channel * area + i]);
      // Each map on its own scale (a weak map still shows its pattern), dimmed by how
      // strong it is overall, so the maps that respond most stand out.
      const strength = globalMax > 0 ? 0.35 + 0.65 * (max / globalMax) : 0;
      for (let i = 0; i < area; i += 1) {
        const t = max > 0 ? (values[channel * area + i] / max) * strength : 0;
        const [r, g, b] = colour(t);
        image.data[4 * i] = r;
        image.data[4 * i + 1] = g;
        image.data[4 * i + 2] = b;
        image.data[4 * i + 3] = 255;
      }
      context.putImageData(image, 0, 0);
      canvas.dataset.max = max.toFixed(4);
      canvas.setAttribute(
        "aria-label",
        "Feature map " + (channel + 1) + " of " + canvases.length + ", strongest response " + max.toFixed(2)
      );
    });
    featureGrid.dataset.rendered = "true";
  }

  // ---------------------------------------------------------------- MNIST preprocessing
  // A mirror of server/mnist_serving_server/core/images.py: to_white_on_black, then
  // to_mnist_digit (crop to ink, Pillow's reduce + Lanczos resize to a 20-px box, paste
  // with the centre of mass on index (14, 14)).

  function readGrey() {
    const { width, height } = pad;
    const rgba = padContext.getImageData(0, 0, width, height).data;
    const grey = new Uint8Array(width * height);
    for (let i = 0; i < grey.length; i += 1) {
      // ITU-R 601 luma, as Pillow's convert("L") (the pad is opaque, grey anyway).
      grey[i] = Math.round((rgba[4 * i] * 299 + rgba[4 * i + 1] * 587 + rgba[4 * i + 2] * 114) / 1000);
    }
    return { width: width, height: height, data: grey };
  }

  function median(values) {
    const sorted = Float64Array.from(values).sort();
    const n = sorted.length;
    return (sorted[Math.floor((n - 1) / 2)] + sorted[Math.floor(n / 2)]) / 2;
  }

  function toWhiteOnBlack(image) {
    const { width: w, height: h, data } = image;
    const border = [];
    for (let x = 0; x < w; x += 1) border.push(data[x], data[(h - 1) * w + x]);
    for (let y = 1; y < h - 1; y += 1) border.push(data[y * w], data[y * w + w - 1]);
    let background = median(border);
    const noiseSigma = MAD_TO_SIGMA * median(border.map((v) => Math.abs(v - background)));
    let darkest = 255;
    let brightest = 0;
    for (const v of data) {
      if (v < darkest) darkest = v;
      if (v > brightest) brightest = v;
    }
    const inverted = background > (darkest + brightest) / 2;
    let ink = brightest;
    if (inverted) {
      background = 255 - background;
      ink = 255 - darkest;
    }
    const blackPoint = background + NOISE_SIGMAS * noiseSigma;
    const contrast = ink - blackPoint;
    const out = new Uint8Array(data.length);
    if (contrast < MIN_INK_CONTRAST) return { width: w, height: h, data: out };
    const table = new Uint8Array(256);
    for (let level = 0; level < 256; level += 1) {
      const v = inverted ? 255 - level : level;
      table[level] = Math.min(Math.max(Math.round(((v - blackPoint) * 255) / contrast), 0), 255);
    }
    for (let i = 0; i < data.length; i += 1) out[i] = table[data[i]];
    return { width: w, height: h, data: out };
  }

  function sinc(x) {
    if (x === 0) return 1;
    const px = Math.PI * x;
    return Math.sin(px) / px;
  }
  function lanczos(x) {
    return x > -LANCZOS_SUPPORT && x < LANCZOS_SUPPORT ? sinc(x) * sinc(x / LANCZOS_SUPPORT) : 0;
  }

  // Pillow's precompute_coeffs: for each output pixel, the input range and its weights.
  function coefficients(inSize, inExtent, outSize) {
    const scale = inExtent / outSize;
    const filterScale = Math.max(scale, 1);
    const support = LANCZOS_SUPPORT * filterScale;
    const result = [];
    for (let xx = 0; xx < outSize; xx += 1) {
      const centre = (xx + 0.5) * scale;
      const xmin = Math.max(Math.trunc(centre - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(centre + support + 0.5), inSize);
      const weights = [];
      let total = 0;
      for (let x = xmin; x < xmax; x += 1) {
        const weight = lanczos((x - centre + 0.5) / filterScale);
        weights.push(weight);
        total += weight;
      }
      result.push({ start: xmin, weights: weights.map((weight) => (total ? weight / total : 0)) });
    }
    return result;
  }

  function clip8(value) {
    return Math.min(Math.max(Math.round(value), 0), 255);
  }

  // Pillow's Image.reduce: the mean of each factor_x x factor_y block (partial at the edges).
  function reduce(image, fx, fy) {
    const w = Math.ceil(image.width / fx);
    const h = Math.ceil(image.height / fy);
    const out = new Uint8Array(w * h);
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        let sum = 0;
        let count = 0;
        for (let yy = y * fy; yy < Math.min((y + 1) * fy, image.height); yy += 1) {
          for (let xx = x * fx; xx < Math.min((x + 1) * fx, image.width); xx += 1) {
            sum += image.data[yy * image.width + xx];
            count += 1;
          }
        }
        out[y * w + x] = clip8(sum / count);
      }
    }
    return { width: w, height: h, data: out };
  }

  // Pillow's resize(..., LANCZOS, reducing_gap=3.0): integer reduce first, then the
  // separable Lanczos (horizontal pass, then vertical), rounding to 8 bits after each.
  function resize(image, outWidth, outHeight) {
    const fx = Math.max(Math.trunc(image.width / outWidth / RESIZE_REDUCING_GAP), 1);
    const fy = Math.max(Math.trunc(image.height / outHeight / RESIZE_REDUCING_GAP), 1);
    let extentX = image.width;
    let extentY = image.height;
    if (fx > 1 || fy > 1) {
      image = reduce(image, fx, fy);
      extentX /= fx;
      extentY /= fy;
    }
    let current = image;
    if (outWidth !== current.width || extentX !== current.width) {
      const coeffs = coefficients(current.width, extentX, outWidth);
      const out = new Uint8Array(outWidth * current.height);
      for (let y = 0; y < current.height; y += 1) {
        for (let x = 0; x < outWidth; x += 1) {
          const { start, weights } = coeffs[x];
          let sum = 0;
          for (let k = 0; k < weights.length; k += 1) sum += weights[k] * current.data[y * current.width + start + k];
          out[y * outWidth + x] = clip8(sum);
        }
      }
      current = { width: outWidth, height: current.height, data: out };
    }
    if (outHeight !== current.height || extentY !== current.height) {
      const coeffs = coefficients(current.height, extentY, outHeight);
      const out = new Uint8Array(current.width * outHeight);
      for (let y = 0; y < outHeight; y += 1) {
        const { start, weights } = coeffs[y];
        for (let x = 0; x < current.width; x += 1) {
          let sum = 0;
          for (let k = 0; k < weights.length; k += 1) sum += weights[k] * current.data[(start + k) * current.width + x];
          out[y * current.width + x] = clip8(sum);
        }
      }
      current = { width: current.width, height: outHeight, data: out };
    }
    return current;
  }

  function clampedOffset(ideal, extent) {
    return Math.min(Math.max(Math.floor(ideal + 0.5), 0), MNIST_SIDE - extent);
  }

  function toMnistDigit(image) {
    const frame = new Uint8Array(MNIST_SIDE * MNIST_SIDE);
    const { width: w, height: h, data } = image;
    let top = h;
    let bottom = -1;
    let left = w;
    let right = -1;
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        if (data[y * w + x] > INK_THRESHOLD) {
          if (y < top) top = y;
          if (y > bottom) bottom = y;
          if (x < left) left = x;
          if (x > right) right = x;
        }
      }
    }
    if (bottom < 0) return frame;
    const height = bottom - top + 1;
    const width = right - left + 1;
    let digit = { width: width, height: height, data: new Uint8Array(width * height) };
    for (let y = 0; y < height; y += 1) {
      digit.data.set(data.subarray((top + y) * w + left, (top + y) * w + left + width), y * width);
    }
    const scale = DIGIT_BOX_SIDE / Math.max(height, width);
    // Python's round(): half to even.
    const pyRound = (v) => {
      const r = Math.round(v);
      return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
    };
    const newHeight = Math.max(1, pyRound(height * scale));
    const newWidth = Math.max(1, pyRound(width * scale));
    if (newHeight !== height || newWidth !== width) digit = resize(digit, newWidth, newHeight);

    let total = 0;
    let rowMoment = 0;
    let columnMoment = 0;
    for (let y = 0; y < newHeight; y += 1) {
      for (let x = 0; x < newWidth; x += 1) {
        const v = digit.data[y * newWidth + x];
        total += v;
        rowMoment += v * y;
        columnMoment += v * x;
      }
    }
    if (total === 0) return frame;
    const offsetTop = clampedOffset(CENTRE_OF_MASS_INDEX - rowMoment / total, newHeight);
    const offsetLeft = clampedOffset(CENTRE_OF_MASS_INDEX - columnMoment / total, newWidth);
    for (let y = 0; y < newHeight; y += 1) {
      frame.set(digit.data.subarray(y * newWidth, (y + 1) * newWidth), (offsetTop + y) * MNIST_SIDE + offsetLeft);
    }
    return frame;
  }

  function preprocess(grey) {
    return toMnistDigit(toWhiteOnBlack(grey));
  }

  // ---------------------------------------------------------------- start

  // For tests and the curious (the browser console): the page's state and its
  // preprocessing, to compare with the server's.
  window.mnistPage = {
    state: state,
    preprocess: preprocess,
    readGrey: readGrey,
  };

  clearPad();
  resetAnswer();
  loadRepository().catch((error) => setStatus(error.message, "error"));
})();
