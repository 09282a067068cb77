// The page at GET /: pick, drop or paste images, send them to /predict/batch?preview=true and show
// each answer as the tutorial's plots did: the image, the label and a bar chart of the ten probabilities;
// then ask /explain for each, one at a time, and show where the model looked beside the 32x32 preview.
// Plain script, no framework and no build step; the server's Content-Security-Policy forbids inline
// script, so every handler is attached here.
"use strict";

(function () {
  // The server's own limits, read from /metadata (no copy of its defaults here). A drop waits for
  // /metadata to answer; if it never does, each file is sent alone: one file is within any file-count
  // limit, and a file over the byte limit gets the server's own 413 message.
  let limits = null;
  // Room for each part's multipart headers, so a request of files that fit still fits as a body.
  const PART_OVERHEAD_BYTES = 1024;
  const MAX_RETRIES = 5;

  const fileInput = document.getElementById("file-input");
  const pickButton = document.getElementById("pick-button");
  const dropZone = document.getElementById("drop-zone");
  const results = document.getElementById("results");
  const statusLine = document.getElementById("status");
  const emptyNote = document.getElementById("empty-note");
  const clearButton = document.getElementById("clear-button");
  const modelInfo = document.getElementById("model-info");
  const limitsNote = document.getElementById("limits");
  const template = document.getElementById("card-template");
  const keyBox = document.getElementById("key-box");
  const keyInput = document.getElementById("api-key");
  // The key lives in this tab's sessionStorage: it survives a reload, not the closed tab.
  const KEY_STORAGE = "cifar10-api-key";
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", function () {
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  if (keyInput.value) keyBox.open = true;

  // The pasted key, for every route that classifies (/predict/batch, /explain).
  function keyHeaders() {
    const key = keyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  let metadata = null;
  let pastedCount = 0;
  let cardCount = 0;
  const objectUrls = [];

  function percent(probability) {
    return (probability * 100).toFixed(1) + "%";
  }

  function formatBytes(bytes) {
    // A no-break space keeps the number and its unit on one line. MB is 1024 x 1024 bytes, as the server says.
    if (bytes < 1024 * 1024) return Math.max(1, Math.round(bytes / 1024)) + "\u00a0KB";
    return (bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, "") + "\u00a0MB";
  }

  function formatBytesExactly(bytes) {
    return formatBytes(bytes) + " (" + bytes.toLocaleString("en") + " bytes)";
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  // ---- Model details and limits ------------------------------------------------------------

  async function loadMetadata() {
    try {
      const response = await fetch("/metadata");
      if (!response.ok) throw new Error(await errorDetail(response));
      metadata = await response.json();
    } catch (error) {
      modelInfo.textContent = "Model details are unavailable (" + error.message + ").";
      return;
    }
    const serving = metadata.serving;
    limits = { maxUploadBytes: serving.max_upload_bytes, maxBatchFiles: serving.max_batch_files };
    // A server that requires a key says so: show the field before the first image is sent.
    if (serving.api_key_required) keyBox.open = true;
    // The picker offers what the server takes (the page's own accept="image/*" until then).
    fileInput.accept = serving.accepted_media_types.join(",");
    limitsNote.textContent = "Up to " + serving.max_batch_files + " images at once, each at most " +
      formatBytes(largestFile()) + ": " + serving.accepted_formats.join(", ") + ". Larger files and other " +
      "formats are refused here, before anything is sent.";
    showModelInfo();
  }

  // /metadata carries the training metadata; the served version number arrives with each prediction.
  function showModelInfo(version) {
    if (!metadata) return;
    const model = metadata.model;
    const parts = ["Model " + (model.name || "unnamed")];
    const shownVersion = model.version !== undefined ? model.version : version;
    if (shownVersion !== undefined) parts.push("version " + shownVersion);
    if (model.architecture) parts.push(model.architecture);
    if (typeof model.val_accuracy === "number") {
      let accuracy = "validation accuracy " + percent(model.val_accuracy);
      if (model.val_images) accuracy += " on " + model.val_images.toLocaleString("en") + " images";
      parts.push(accuracy);
    }
    modelInfo.textContent = parts.join(" · ");
  }

  // ---- Taking files in: picker, drag and drop, paste ----------------------------------------

  pickButton.addEventListener("click", function () {
    fileInput.click();
  });

  fileInput.addEventListener("change", function () {
    const files = Array.from(fileInput.files);
    // Reset so that choosing the same file again still fires "change".
    fileInput.value = "";
    classify(files);
  });

  // The whole page takes drops: a near miss should not make the browser navigate away to the file.
  let dragDepth = 0;
  document.addEventListener("dragenter", function (event) {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", function (event) {
    if (!hasFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) dropZone.classList.remove("dragging");
  });
  document.addEventListener("dragover", function (event) {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", function (event) {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    dropZone.classList.remove("dragging");
    classify(Array.from(event.dataTransfer.files));
  });

  function isEditable(element) {
    return element instanceof HTMLInputElement || element instanceof HTMLTextAreaElement ||
      (element instanceof HTMLElement && element.isContentEditable);
  }

  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).indexOf("Files") !== -1;
  }

  document.addEventListener("paste", function (event) {
    const data = event.clipboardData;
    if (!data) return;
    let files = Array.from(data.files || []);
    if (files.length === 0) {
      files = Array.from(data.items || [])
        .filter(function (item) { return item.kind === "file"; })
        .map(function (item) { return item.getAsFile(); })
        .filter(Boolean);
    }
    if (files.length === 0) {
      // Text pasted into a field (the API key) is that field's: only a paste elsewhere meant an image.
      if (!isEditable(event.target)) {
        setStatus("The clipboard holds no image to classify. Copy an image, not its address.");
      }
      return;
    }
    event.preventDefault();
    // Screenshots pasted from the clipboard are all called "image.png": number them to tell them apart.
    classify(files.map(function (file) {
      pastedCount += 1;
      return { file: file, name: "Pasted image " + pastedCount };
    }));
  });

  clearButton.addEventListener("click", function () {
    results.replaceChildren();
    objectUrls.splice(0).forEach(function (url) { URL.revokeObjectURL(url); });
    emptyNote.hidden = false;
    clearButton.hidden = true;
    setStatus("Results cleared.");
    pickButton.focus();
  });

  // ---- Sending -------------------------------------------------------------------------------

  async function classify(items) {
    const entries = items.map(function (item) {
      return item instanceof File ? { file: item, name: item.name || "image" } : item;
    });
    if (entries.length === 0) return;
    const noun = entries.length === 1 ? "image" : "images";
    setStatus("Classifying " + entries.length + " " + noun + "…");

    // Newest first, in the order given, so the answer to what was just dropped is next to the drop zone.
    const fragment = document.createDocumentFragment();
    entries.forEach(function (entry) {
      entry.card = makeCard(entry);
      fragment.appendChild(entry.card);
    });
    results.insertBefore(fragment, results.firstChild);
    emptyNote.hidden = true;
    clearButton.hidden = false;

    let classified = 0;
    let rejected = 0;
    await metadataLoaded;
    const sendable = [];
    for (const entry of entries) {
      const refusal = await refusalBeforeSending(entry.file);
      if (refusal) {
        showError(entry.card, refusal);
        rejected += 1;
      } else {
        sendable.push(entry);
      }
    }
    for (const chunk of chunks(sendable)) {
      const answers = await sendChunk(chunk);
      chunk.forEach(function (entry, index) {
        const answer = answers[index];
        if (answer.error) {
          showError(entry.card, answer.error);
          rejected += 1;
        } else {
          showPrediction(entry.card, answer.prediction);
          classified += 1;
        }
      });
    }
    setStatus(summary(entries, classified, rejected));
    // One explanation at a time: the server caps how many run at once (MAX_CONCURRENT_EXPLANATIONS).
    for (const entry of sendable) {
      if (entry.card.classList.contains("failed")) continue;
      await explain(entry);
    }
  }

  // ---- Where the model looked: POST /explain -------------------------------------------------

  async function explain(entry) {
    const form = new FormData();
    form.append("file", entry.file, entry.name);
    const figure = entry.card.querySelector(".explain-figure");
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch("/explain", { method: "POST", body: form, headers: keyHeaders() });
      } catch (error) {
        return;  // the prediction is shown already; the overlay is extra
      }
      if (response.ok) {
        showExplanation(entry.card, await response.json());
        return;
      }
      if ((response.status === 503 || response.status === 429) && attempt < MAX_RETRIES) {
        const seconds = Number(response.headers.get("Retry-After")) || 1;
        await new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
        continue;
      }
      figure.hidden = false;
      figure.querySelector(".overlay").hidden = true;
      figure.querySelector(".explain-caption").textContent = "No explanation: " + (await errorDetail(response));
      return;
    }
  }

  function showExplanation(card, answer) {
    const explanation = answer.explanation;
    const figure = card.querySelector(".explain-figure");
    const overlay = figure.querySelector(".overlay");
    overlay.src = explanation.overlay;
    overlay.alt = "Where the model looked for " + explanation.label + ": the 32 by 32 image coloured by how much " +
      "hiding each area lowers the answer";
    figure.querySelector(".explain-caption").textContent = "Where the model looked (" + explanation.label + ")";
    figure.hidden = false;
    const legend = card.querySelector(".legend");
    legend.textContent = explanation.legend;
    legend.hidden = false;
  }

  // What a screen reader hears once a drop is done (the status line is aria-live).
  function summary(entries, classified, rejected) {
    if (entries.length === 1) {
      const card = entries[0].card;
      if (card.classList.contains("failed")) {
        return entries[0].name + ": " + card.querySelector(".error-title").textContent + ". " +
          card.querySelector(".error-detail").textContent;
      }
      const note = card.classList.contains("out-of-distribution") ? " " + card.querySelector(".ood-note").textContent : "";
      return entries[0].name + ": " + card.querySelector(".verdict").textContent + "." + note;
    }
    let text = "Done: " + classified + " classified";
    if (rejected) {
      const names = entries.filter(function (entry) { return entry.card.classList.contains("failed"); })
        .map(function (entry) { return entry.name; });
      text += ", " + rejected + " rejected (" + names.join(", ") + ")";
    }
    return text + ".";
  }

  // ---- Refusing before sending: what the server would refuse anyway, said in words ----------

  // The largest file that fits in one request beside its part's multipart headers.
  function largestFile() {
    return limits.maxUploadBytes - PART_OVERHEAD_BYTES;
  }

  // What each accepted format's files start with, whatever their names say: the server's rule
  // (core/preprocessing.py FORMAT_SIGNATURES) for telling a broken image (400) from another format (415).
  const SIGNATURES = {
    JPEG: [[0, [0xff, 0xd8, 0xff]]],
    PNG: [[0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]]],
    GIF: [[0, [0x47, 0x49, 0x46, 0x38]]],
    WEBP: [[0, [0x52, 0x49, 0x46, 0x46]], [8, [0x57, 0x45, 0x42, 0x50]]],
    BMP: [[0, [0x42, 0x4d]]],
    TIFF: [[0, [0x49, 0x49, 0x2a, 0x00]]],
  };
  // TIFF's other byte order, and BigTIFF in both.
  const OTHER_TIFF = [[0x4d, 0x4d, 0x00, 0x2a], [0x49, 0x49, 0x2b, 0x00], [0x4d, 0x4d, 0x00, 0x2b]];

  function startsLike(head, offset, bytes) {
    return bytes.every(function (value, index) { return head[offset + index] === value; });
  }

  function sniffFormat(head) {
    if (OTHER_TIFF.some(function (bytes) { return startsLike(head, 0, bytes); })) return "TIFF";
    return Object.keys(SIGNATURES).find(function (format) {
      return SIGNATURES[format].every(function (part) { return startsLike(head, part[0], part[1]); });
    }) || null;
  }

  // null when the file may be sent; else {title, detail} saying why not and what to do.
  async function refusalBeforeSending(file) {
    if (file.size === 0) {
      return { title: "Empty file, not sent",
        detail: "The file has no bytes. Pick the image file itself, or save the image again." };
    }
    if (!limits) return null;  // without /metadata the server decides, and its message says why
    if (file.size > largestFile()) {
      return { title: "Too large, not sent",
        detail: "The file is " + formatBytesExactly(file.size) + "; the server takes at most " +
          formatBytesExactly(largestFile()) + " per image. Scale the image down or save it as JPEG, then " +
          "try again." };
    }
    let head;
    try {
      head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
    } catch (error) {
      // Moved or deleted since it was picked, or a folder: this file's refusal, not the whole drop's end.
      return { title: "Could not be read, not sent",
        detail: "The browser could not read this file (" + error.message + "). It may have been moved or " +
          "deleted since it was picked: pick it again." };
    }
    const format = sniffFormat(head);
    const accepted = metadata.serving.accepted_formats;
    if (format === null || accepted.indexOf(format) === -1) {
      const kind = file.type ? " (the browser calls it " + file.type + ")" : "";
      return { title: "Not an image the model takes, not sent",
        detail: "This file" + kind + " is not " + listInWords(accepted) + ": its first bytes say so, " +
          "whatever its name. Convert it to one of these formats, or pick another file." };
    }
    return null;
  }

  function listInWords(names) {
    return names.length < 2 ? names.join("") : names.slice(0, -1).join(", ") + " or " + names[names.length - 1];
  }

  // Split into requests the server takes whole: at most max_batch_files files and max_upload_bytes
  // bytes each. A file over the byte limit goes alone, so the server's own 413 message names it.
  function chunks(entries) {
    if (!limits) return entries.map(function (entry) { return [entry]; });
    const groups = [];
    let current = [];
    let bytes = PART_OVERHEAD_BYTES;
    entries.forEach(function (entry) {
      const size = entry.file.size + PART_OVERHEAD_BYTES;
      if (current.length && (current.length >= limits.maxBatchFiles || bytes + size > limits.maxUploadBytes)) {
        groups.push(current);
        current = [];
        bytes = PART_OVERHEAD_BYTES;
      }
      current.push(entry);
      bytes += size;
    });
    if (current.length) groups.push(current);
    return groups;
  }

  // One answer per entry: {prediction} or {error: {status, detail}}.
  async function sendChunk(chunk) {
    const form = new FormData();
    chunk.forEach(function (entry) {
      form.append("files", entry.file, entry.name);
    });
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch("/predict/batch?preview=true", { method: "POST", body: form, headers: keyHeaders() });
      } catch (error) {
        return chunk.map(function () {
          return { error: { status: 0, detail: "The server could not be reached (" + error.message + "). Try again." } };
        });
      }
      if (response.ok) {
        let body;
        try {
          body = await response.json();
        } catch (error) {  // cut off, or not the service answering: each card says so rather than spin
          return chunk.map(function () {
            return { error: { status: response.status, detail: "The server's answer could not be read (" +
              error.message + "). Try again." } };
          });
        }
        return body.results.map(function (result) {
          return "detail" in result ? { error: result } : { prediction: result };
        });
      }
      const detail = await errorDetail(response);
      // 401/403: the key is missing or wrong. Open the key field so the person can paste one.
      if (response.status === 401 || response.status === 403) {
        keyBox.open = true;
        keyInput.focus();
      }
      // 503 (warming up, busy) and 429 (too many requests from here) say when to come back: wait and retry.
      if ((response.status === 503 || response.status === 429) && attempt < MAX_RETRIES) {
        setStatus(detail + " Retrying…");
        const seconds = Number(response.headers.get("Retry-After")) || 1;
        await new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
        continue;
      }
      return chunk.map(function () {
        return { error: { status: response.status, detail: detail } };
      });
    }
  }

  async function errorDetail(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (ignored) {
      // Not JSON (a proxy's error page, say): fall through to the status line.
    }
    return "The server answered " + response.status + " " + response.statusText + ".";
  }

  // ---- Showing -------------------------------------------------------------------------------

  function makeCard(entry) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.querySelector(".card-title").textContent = entry.name;
    // The true-class picker is described by its card's own help text.
    cardCount += 1;
    const help = card.querySelector(".truth-help");
    help.id = "truth-help-" + cardCount;
    card.querySelector(".truth-select").setAttribute("aria-describedby", help.id);
    const original = card.querySelector(".original");
    const url = URL.createObjectURL(entry.file);
    objectUrls.push(url);
    original.alt = "The uploaded image " + entry.name;
    original.addEventListener("error", function () {
      // TIFF, say, or not an image at all: the browser cannot draw it, the server may still read it.
      const note = document.createElement("p");
      note.className = "no-picture";
      note.textContent = "This browser cannot display this file.";
      original.replaceWith(note);
    });
    original.src = url;
    return card;
  }

  function showPrediction(card, prediction) {
    card.removeAttribute("aria-busy");
    card.classList.add("done");
    card.dataset.label = prediction.label;
    const verdict = card.querySelector(".verdict");
    verdict.replaceChildren();
    const label = document.createElement("strong");
    label.className = "label";
    label.textContent = prediction.label;
    const confidence = document.createElement("span");
    confidence.className = "confidence";
    confidence.textContent = percent(prediction.confidence);
    verdict.append(label, ", ", confidence, " confident");

    // "None of these": the service's score is over its threshold (null: the model has no threshold).
    if (prediction.in_distribution === false) {
      const note = card.querySelector(".ood-note");
      note.textContent = "This does not look like any of the ten classes: the answer above is only the " +
        "closest of them.";
      note.hidden = false;
      card.classList.add("out-of-distribution");
    }

    const preview = card.querySelector(".preview");
    preview.src = prediction.preview;
    preview.alt = "The 32 by 32 pixel image the model classified as " + prediction.label;

    const chart = card.querySelector(".chart");
    chart.setAttribute("aria-label", "Probability of each of the ten classes");
    const select = card.querySelector(".truth-select");
    Object.keys(prediction.probabilities).forEach(function (name) {
      chart.appendChild(barRow(name, prediction.probabilities[name], name === prediction.label));
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.appendChild(option);
    });
    chart.hidden = false;
    select.addEventListener("change", function () {
      markTruth(card, select.value);
    });
    card.querySelector(".truth").hidden = false;
    showModelInfo(prediction.model && prediction.model.version);
  }

  function barRow(name, probability, isTop) {
    const row = document.createElement("li");
    row.className = "bar-row" + (isTop ? " top" : "");
    row.dataset.label = name;
    row.dataset.probability = String(probability);
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = (probability * 100).toFixed(2) + "%";
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(probability);
    row.append(label, track, value);
    return row;
  }

  // As in the tutorial: the top bar blue when the model is right, red when wrong, and then the true
  // class's bar blue. The note says it in words too, so colour is never the only signal.
  function markTruth(card, truth) {
    const predicted = card.dataset.label;
    const note = card.querySelector(".truth-note");
    card.querySelectorAll(".bar-row").forEach(function (row) {
      row.classList.remove("correct", "wrong", "true-class");
      if (!truth) return;
      if (row.dataset.label === predicted) row.classList.add(truth === predicted ? "correct" : "wrong");
      else if (row.dataset.label === truth) row.classList.add("true-class");
    });
    card.classList.toggle("is-correct", Boolean(truth) && truth === predicted);
    card.classList.toggle("is-wrong", Boolean(truth) && truth !== predicted);
    if (!truth) note.textContent = "";
    else if (truth === predicted) note.textContent = "Right: the model said " + predicted + ".";
    else note.textContent = "Wrong: the model said " + predicted + ", the true class is " + truth + ".";
  }

  // What went wrong, in words, for each status the server answers a refused file with; the server's
  // own message follows it and says what to do.
  const REJECTION_TITLES = {
    0: "The server could not be reached",
    401: "API key needed",
    403: "API key refused",
    400: "Could not be read as an image",
    408: "The upload took too long",
    413: "Too large for the server",
    415: "Not an image format the model takes",
    422: "The request was not understood",
    429: "Too many requests",
    503: "The server is busy",
  };

  function rejectionTitle(status) {
    return REJECTION_TITLES[status] || "Refused by the server (HTTP " + status + ")";
  }

  // error: {title, detail} when the page refused the file itself, {status, detail} when the server did.
  function showError(card, error) {
    card.removeAttribute("aria-busy");
    card.classList.add("done", "failed");
    card.querySelector(".verdict").hidden = true;
    card.querySelector(".preview").closest("figure").hidden = true;
    const message = card.querySelector(".error");
    const title = document.createElement("strong");
    title.className = "error-title";
    title.textContent = error.title || rejectionTitle(error.status);
    const detail = document.createElement("span");
    detail.className = "error-detail";
    detail.textContent = error.detail;
    message.replaceChildren(title, detail);
    message.hidden = false;
  }

  const metadataLoaded = loadMetadata();
})();
