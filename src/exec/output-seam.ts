/**
 * Joins a command's stored output chunks into one buffer per stream and
 * marks where a truncated stream's dropped middle was, so the head and the
 * tail are never read as one line: `\n… [12,345,678 bytes omitted] …\n`.
 * The marker is for people and responses only: byte counts, `*_truncated`
 * and stream offsets stay those of the real output.
 */
import type { OutputChunkRecord, OutputCounters, OutputStreamName } from "./ports.ts";

/** The line put where `omitted` bytes of a stream were dropped. */
export function seamMarker(omitted: number): Buffer {
  return Buffer.from(`\n… [${omitted.toLocaleString("en-US")} bytes omitted] …\n`, "utf8");
}

/**
 * `chunks` in offset order (as stored). `headCap` is the head size the log
 * kept per stream (half the cap); when the stored head does not end exactly
 * there (the cap changed since), the seam is the first place where bytes of
 * the combined log are missing that the other stream's stored chunks do not
 * account for.
 */
export function joinStoredOutput(
  chunks: OutputChunkRecord[],
  counters: Pick<OutputCounters, "stdoutBytes" | "stderrBytes" | "stdoutTruncated" | "stderrTruncated">,
  headCap: number,
): { stdout: Buffer; stderr: Buffer } {
  return {
    stdout: joinStream(chunks, "stdout", counters.stdoutTruncated ? counters.stdoutBytes : null, headCap),
    stderr: joinStream(chunks, "stderr", counters.stderrTruncated ? counters.stderrBytes : null, headCap),
  };
}

/** One stream's bytes; `total` is its real size when it was truncated, else null. */
function joinStream(chunks: OutputChunkRecord[], stream: OutputStreamName, total: number | null, headCap: number): Buffer {
  const mine = chunks.filter((c) => c.stream === stream);
  const parts = mine.map((c) => c.data);
  if (total === null) return Buffer.concat(parts);
  const stored = parts.reduce((n, p) => n + p.length, 0);
  const omitted = total - stored;
  if (omitted <= 0) return Buffer.concat(parts);
  const at = seamIndex(chunks, mine, stream, headCap);
  return Buffer.concat([...parts.slice(0, at), seamMarker(omitted), ...parts.slice(at)]);
}

/** Index into `mine` of the first chunk after the seam. */
function seamIndex(all: OutputChunkRecord[], mine: OutputChunkRecord[], stream: OutputStreamName, headCap: number): number {
  let sum = 0;
  for (let i = 0; i < mine.length; i++) {
    sum += mine[i]!.data.length;
    if (sum === headCap) return i + 1;
    if (sum > headCap) break;
  }
  // Bytes between two consecutive chunks of this stream that no stored chunk
  // of the other stream fills were dropped there.
  let k = 0;
  let prevEnd = -1;
  let otherBytes = 0;
  for (const c of all) {
    if (c.stream !== stream) {
      if (prevEnd >= 0) otherBytes += c.data.length;
      continue;
    }
    if (prevEnd >= 0 && c.offset - prevEnd > otherBytes) return k;
    prevEnd = c.offset + c.data.length;
    otherBytes = 0;
    k++;
  }
  return mine.length;
}
