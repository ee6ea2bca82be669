#!/usr/bin/env node
// Run a keras_clmr ONNX export on a WAV file with onnxruntime-node and print JSON.
//
//   npm install --ignore-scripts        # the CPU binaries ship in the package; the install
//                                       # script would only fetch optional GPU libraries
//   node index.js --model ../../../out/model.onnx song.wav
//   node index.js --model model.onnx --top 5 --batch 8 song.wav
//
// The WAV must be at the model's sample rate (model.json next to the model, else --rate,
// default 22050 Hz); several channels are averaged to mono. Audio is cut into windows of
// model.json's input_samples (or --window) every --hop samples (default: one window, no
// overlap; a remainder shorter than a window is dropped, a clip shorter than one window is
// zero-padded), run in batches, and printed as JSON: window start times, embeddings and,
// for a tagger, per-window tag probabilities, their mean over the clip and the top tags.
'use strict';

const fs = require('fs');
const path = require('path');

function usage(message) {
  if (message) process.stderr.write(`error: ${message}\n`);
  process.stderr.write('usage: node index.js --model MODEL.onnx [--model-json model.json] [--window N] [--hop N] ' +
    '[--rate HZ] [--batch N] [--top K] [--no-embeddings] AUDIO.wav\n');
  process.exit(2);
}

function parseArgs(argv) {
  const options = { batch: 8, top: 5, embeddings: true };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--model') options.model = value();
    else if (arg === '--model-json') options.modelJson = value();
    else if (arg === '--window') options.window = parseInt(value(), 10);
    else if (arg === '--hop') options.hop = parseInt(value(), 10);
    else if (arg === '--rate') options.rate = parseInt(value(), 10);
    else if (arg === '--batch') options.batch = parseInt(value(), 10);
    else if (arg === '--top') options.top = parseInt(value(), 10);
    else if (arg === '--no-embeddings') options.embeddings = false;
    else if (arg === '-h' || arg === '--help') usage();
    else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
  if (!options.model) usage('--model is required');
  if (positional.length !== 1) usage('give exactly one WAV file');
  options.audio = positional[0];
  for (const key of ['window', 'hop', 'rate', 'batch']) {
    if (options[key] !== undefined && !(options[key] > 0)) usage(`--${key} must be a positive integer`);
  }
  return options;
}

// Minimal RIFF/WAVE reader: PCM 8/16/24/32-bit integers and 32/64-bit floats, any channel count.
function readWav(file) {
  const buffer = fs.readFileSync(file);
  if (buffer.length < 12 || buffer.toString('ascii', 0, 4) !== 'RIFF' || buffer.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${file} is not a RIFF/WAVE file; convert it, e.g. ffmpeg -i in.mp3 -ac 1 -ar 22050 out.wav`);
  }
  let format = null;
  let data = null;
  let offset = 12;
  while (offset + 8 <= buffer.length) {
    const id = buffer.toString('ascii', offset, offset + 4);
    const size = buffer.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === 'fmt ') {
      let code = buffer.readUInt16LE(body);
      const bits = buffer.readUInt16LE(body + 14);
      if (code === 0xfffe && size >= 26) code = buffer.readUInt16LE(body + 24); // WAVE_FORMAT_EXTENSIBLE
      format = { code, channels: buffer.readUInt16LE(body + 2), rate: buffer.readUInt32LE(body + 4), bits };
    } else if (id === 'data') {
      data = buffer.subarray(body, Math.min(body + size, buffer.length));
    }
    offset = body + size + (size % 2);
  }
  if (!format || !data) throw new Error(`${file}: no fmt or data chunk`);
  const { code, channels, bits } = format;
  const bytes = bits / 8;
  const frames = Math.floor(data.length / (bytes * channels));
  let read;
  if (code === 1 && bits === 8) read = (o) => (data.readUInt8(o) - 128) / 128;
  else if (code === 1 && bits === 16) read = (o) => data.readInt16LE(o) / 32768;
  else if (code === 1 && bits === 24) read = (o) => data.readIntLE(o, 3) / 8388608;
  else if (code === 1 && bits === 32) read = (o) => data.readInt32LE(o) / 2147483648;
  else if (code === 3 && bits === 32) read = (o) => data.readFloatLE(o);
  else if (code === 3 && bits === 64) read = (o) => data.readDoubleLE(o);
  else throw new Error(`${file}: unsupported WAV encoding (format ${code}, ${bits} bits); use 16-bit PCM or float32`);
  const mono = new Float32Array(frames);
  for (let i = 0; i < frames; i++) {
    let sum = 0;
    for (let c = 0; c < channels; c++) sum += read((i * channels + c) * bytes);
    mono[i] = sum / channels;
  }
  return { samples: mono, rate: format.rate, channels };
}

function windows(samples, window, hop) {
  const starts = [];
  for (let start = 0; start + window <= samples.length; start += hop) starts.push(start);
  if (starts.length === 0) {
    process.stderr.write(`warning: only ${samples.length} samples, shorter than one ${window}-sample window; ` +
      'zero-padded to one window\n');
    const padded = new Float32Array(window);
    padded.set(samples);
    return { source: padded, starts: [0], padded: true };
  }
  return { source: samples, starts, padded: false };
}

function rows(tensor) {
  const [n, d] = tensor.dims;
  const out = [];
  for (let i = 0; i < n; i++) out.push(Array.from(tensor.data.subarray(i * d, (i + 1) * d)));
  return out;
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (error) {
    throw new Error(`onnxruntime-node is not installed (${error.message}); run npm install --ignore-scripts in ${__dirname}`);
  }
  const jsonPath = options.modelJson || path.join(path.dirname(options.model), 'model.json');
  const info = fs.existsSync(jsonPath) ? JSON.parse(fs.readFileSync(jsonPath, 'utf8')) : {};
  const window = options.window || info.input_samples;
  if (!window) throw new Error(`no window length: pass --window or put model.json next to the model (${jsonPath})`);
  const rate = options.rate || info.sample_rate || 22050;
  const hop = options.hop || window;

  const wav = readWav(options.audio);
  if (wav.rate !== rate) {
    throw new Error(`${options.audio} is ${wav.rate} Hz but the model expects ${rate} Hz; resample it first, ` +
      `e.g. ffmpeg -i ${options.audio} -ac 1 -ar ${rate} out.wav`);
  }
  const session = await ort.InferenceSession.create(options.model);
  if (!session.inputNames.includes('audio')) {
    throw new Error(`${options.model} has inputs ${session.inputNames}; expected a keras_clmr export with input "audio"`);
  }
  const { source, starts, padded } = windows(wav.samples, window, hop);
  const outputs = {};
  for (let b = 0; b < starts.length; b += options.batch) {
    const batchStarts = starts.slice(b, b + options.batch);
    const input = new Float32Array(batchStarts.length * window);
    batchStarts.forEach((start, i) => input.set(source.subarray(start, start + window), i * window));
    const result = await session.run({ audio: new ort.Tensor('float32', input, [batchStarts.length, window]) });
    for (const name of session.outputNames) {
      (outputs[name] = outputs[name] || []).push(...rows(result[name]));
    }
  }
  const report = {
    file: options.audio,
    model: options.model,
    sample_rate: rate,
    window_samples: window,
    hop_samples: hop,
    duration_seconds: wav.samples.length / rate,
    channels: wav.channels,
    padded,
    windows: starts.length,
    times: starts.map((s) => s / rate),
  };
  if (options.embeddings && outputs.embedding) report.embeddings = outputs.embedding;
  if (outputs.tags) {
    const classes = info.classes || outputs.tags[0].map((_, j) => `tag_${j}`);
    const clip = classes.map((_, j) => outputs.tags.reduce((sum, row) => sum + row[j], 0) / outputs.tags.length);
    report.tag_probabilities = outputs.tags;
    report.clip_tags = clip;
    report.top_tags = clip.map((p, j) => ({ tag: classes[j], probability: p }))
      .sort((a, b) => b.probability - a.probability).slice(0, options.top);
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

main().catch((error) => {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(1);
});
