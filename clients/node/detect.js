// Detect anomalies in a video through AnyAnomaly's gRPC contract, from Node.js.
//   node detect.js ADDRESS VIDEO TEXT [TEXT ...]
// VIDEO is a video file or a frame folder as the orchestrator sees it. Prints one JSON line per
// segment, then the summary; exits 2 on a refused request (the service's message on stderr).
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, video, ...texts] = process.argv.slice(2);
if (!address || !video || texts.length === 0) {
  console.error("usage: node detect.js ADDRESS VIDEO TEXT [TEXT ...]");
  process.exit(2);
}
const root = path.resolve(__dirname, "../..");  // the protos import each other as anyanomaly/v1/*.proto
const definition = protoLoader.loadSync("anyanomaly/v1/orchestrator.proto", {
  includeDirs: [root], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const { Orchestrator } = grpc.loadPackageDefinition(definition).anyanomaly.v1;
const client = new Orchestrator(address, grpc.credentials.createInsecure());

const folder = fs.existsSync(video) && fs.statSync(video).isDirectory();
const local = fs.existsSync(video) ? path.resolve(video) : video;  // else a path on the orchestrator's machine
const source = /:\/\//.test(video) ? { uri: video } : folder ? { frame_folder: local } : { path: local };
const call = client.Detect({ source, texts });
call.on("data", (update) => {
  if (update.segment) {
    const { index, start_frame, end_frame, score, scores } = update.segment;
    const best = scores.reduce((a, b) => (b.fused > a.fused ? b : a), scores[0]);
    console.log(JSON.stringify({ segment: index, start_frame, end_frame, score, text: best.text }));
  } else if (update.summary) {
    const { num_frames, frame_scores } = update.summary;
    const max = frame_scores.reduce((a, b) => Math.max(a, b), 0);
    console.log(JSON.stringify({ summary: { num_frames, max } }));
  }
});
call.on("error", (error) => {
  console.error(`${grpc.status[error.code]}: ${error.details}`);
  process.exit(error.code === grpc.status.INVALID_ARGUMENT ? 2 : 1);
});
