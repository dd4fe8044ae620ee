// vigil Web Plugin: one ES module, no build step. Served by `vigil web` at /plugin/vigil-web.js.
//
//   import * as VigilLiveness from "https://adapter.example/plugin/vigil-web.js";
//   VigilLiveness.open({ meta: { transaction_id }, on_complete: (r) => ..., lang: "de" });
//
// The plugin opens the camera, shows an oval and the prompts, records a short video
// (MediaRecorder), and sends it with capture metadata (camera label, video devices, frame capture
// times, timestamps, user agent) to the adapter it was loaded from. It decides nothing: the answer
// it reports is the adapter's (SAFE by default: { status: "SUCCESS" | "DECLINED" }).

const ADAPTER = new URL("..", import.meta.url).href.replace(/\/$/, "");

const LANGUAGES = {
  en: {
    starting: "Starting the camera…",
    place_face: "Place your face in the oval",
    hold_still: "Hold still",
    blink: "Blink",
    smile: "Smile",
    turn_left: "Turn your head to your left",
    turn_right: "Turn your head to your right",
    tilt_up: "Tilt your head up",
    tilt_down: "Tilt your head down",
    move_closer: "Move closer",
    sending: "Checking…",
    SUCCESS: "Done: verified",
    DECLINED: "Not verified",
    error: "Something went wrong",
    no_camera: "No camera is available or access was refused",
    close: "Close",
  },
  de: {
    starting: "Kamera wird gestartet…",
    place_face: "Gesicht in das Oval bringen",
    hold_still: "Bitte still halten",
    blink: "Blinzeln",
    smile: "Lächeln",
    turn_left: "Kopf nach links drehen",
    turn_right: "Kopf nach rechts drehen",
    tilt_up: "Kopf nach oben neigen",
    tilt_down: "Kopf nach unten neigen",
    move_closer: "Näher herankommen",
    sending: "Wird geprüft…",
    SUCCESS: "Fertig: bestätigt",
    DECLINED: "Nicht bestätigt",
    error: "Etwas ist schiefgegangen",
    no_camera: "Keine Kamera verfügbar oder Zugriff verweigert",
    close: "Schließen",
  },
};

/** Adds (or extends) a language pack: addLanguage("fr", { hold_still: "Ne bougez plus", … }).
 * Missing strings fall back to English. */
export function addLanguage(code, strings) {
  LANGUAGES[code] = { ...(LANGUAGES[code] || {}), ...strings };
}

const LEAD_MS = 800; // neutral face before the first prompt (the person's own baseline)
const GESTURE_MS = 1800;
const PAUSE_MS = 600;
const PASSIVE_MS = 2500;

let current = null;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function element(tag, className, parent) {
  const node = document.createElement(tag);
  node.className = className;
  parent.appendChild(node);
  return node;
}

function stylesheet() {
  if (document.querySelector("link[data-vigil-web]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = `${ADAPTER}/plugin/vigil-web.css`;
  link.dataset.vigilWeb = "1";
  document.head.appendChild(link);
}

/** Opens the plugin. Options: meta (folder metadata: transaction_id, user_id…), gestures (true:
 * ask the adapter for an active challenge), the callbacks on_capture_complete(info),
 * on_result(answer), on_complete(answer), on_error({ code, message }), and lang ("en", "de" or one
 * added with addLanguage). */
export async function open(options = {}) {
  close();
  const strings = { ...LANGUAGES.en, ...(LANGUAGES[options.lang] || {}) };
  stylesheet();
  const root = element("div", "vigil-web", document.body);
  root.dataset.state = "starting";
  const frame = element("div", "vigil-web__frame", root);
  const video = element("video", "vigil-web__video", frame);
  video.muted = true;
  video.playsInline = true;
  element("div", "vigil-web__oval", frame);
  const prompt = element("div", "vigil-web__prompt", root);
  const closeButton = element("button", "vigil-web__close", root);
  closeButton.textContent = strings.close;
  closeButton.addEventListener("click", () => close());
  const state = { root, stream: null, recorder: null, closed: false };
  current = state;

  const show = (name, text) => {
    root.dataset.state = name;
    prompt.textContent = text ?? strings[name] ?? name;
  };
  const fail = (code, message) => {
    show("error", `${strings.error}: ${message}`);
    if (options.on_error) options.on_error({ code, message });
  };

  show("starting");
  let session;
  try {
    const opened = await fetch(`${ADAPTER}/api/sessions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ meta: options.meta || {}, gestures: options.gestures === true }),
    });
    session = await opened.json();
    if (!opened.ok) return fail(opened.status, session.error);
  } catch (error) {
    return fail("network", String(error));
  }

  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" },
      audio: false,
    });
  } catch (error) {
    return fail("camera", strings.no_camera);
  }
  if (state.closed) return stopStream(state);
  video.srcObject = state.stream;
  await video.play();
  const track = state.stream.getVideoTracks()[0];
  const devices = (await navigator.mediaDevices.enumerateDevices())
    .filter((d) => d.kind === "videoinput")
    .map((d) => d.label);

  // the capture time of each frame the page sees (the service checks their regularity)
  const stamps = [];
  const onFrame = (now, metadata) => {
    if (state.recorder && state.recorder.state === "recording") {
      stamps.push(metadata.captureTime ?? metadata.expectedDisplayTime ?? now);
    }
    if (!state.closed) video.requestVideoFrameCallback(onFrame);
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);

  const type = ["video/webm;codecs=vp8", "video/webm", "video/mp4"].find((t) =>
    MediaRecorder.isTypeSupported(t),
  );
  const recorder = new MediaRecorder(state.stream, type ? { mimeType: type } : {});
  state.recorder = recorder;
  const chunks = [];
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  const startedMs = Date.now();
  recorder.start(250);

  if (session.gestures.length) {
    show("place_face");
    await sleep(LEAD_MS);
    for (const gesture of session.gestures) {
      show(`gesture_${gesture}`, strings[gesture]);
      await sleep(GESTURE_MS);
      show("place_face");
      await sleep(PAUSE_MS);
    }
  } else {
    show("hold_still");
    await sleep(PASSIVE_MS);
  }
  if (state.closed) return;
  recorder.stop();
  await stopped;
  const stoppedMs = Date.now();
  stopStream(state);

  const blob = new Blob(chunks, { type: (recorder.mimeType || "video/webm").split(";")[0] });
  const capture = {
    camera_label: track.label,
    devices,
    frame_timestamps_ms: stamps,
    started_ms: startedMs,
    stopped_ms: stoppedMs,
    user_agent: navigator.userAgent,
    platform: navigator.platform,
  };
  if (options.on_capture_complete) {
    options.on_capture_complete({ bytes: blob.size, type: blob.type, ...capture });
  }
  show("sending");
  const form = new FormData();
  form.append("video", blob, "capture.webm");
  form.append("capture", JSON.stringify(capture));
  let answer;
  try {
    const sent = await fetch(`${ADAPTER}/api/sessions/${session.session_id}/capture`, {
      method: "POST",
      headers: { "X-Vigil-Session": session.session_id },
      body: form,
    });
    answer = await sent.json();
    if (!sent.ok) return fail(sent.status, answer.error);
  } catch (error) {
    return fail("network", String(error));
  }
  show(answer.status === "SUCCESS" ? "success" : "declined", strings[answer.status]);
  if (options.on_result) options.on_result(answer);
  if (options.on_complete) options.on_complete(answer);
  return answer;
}

function stopStream(state) {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
}

/** Stops the camera and removes the plugin from the page. */
export function close() {
  if (!current) return;
  current.closed = true;
  if (current.recorder && current.recorder.state === "recording") current.recorder.stop();
  stopStream(current);
  current.root.remove();
  current = null;
}

/** Hides the plugin's view (the capture goes on); open() again to start over. */
export function hide() {
  if (current) current.root.hidden = true;
}
