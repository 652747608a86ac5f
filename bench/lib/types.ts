/** Result shapes shared by the sections, the table and the JSON file. */

export interface Measurement {
  /** Short row label. */
  name: string;
  /** What exactly ran. */
  detail: string;
  /** Wall times, ms, one per run. */
  samples: number[];
  median: number;
  p95?: number;
  /** For latency distributions: the 99th percentile and the largest sample, ms. */
  p99?: number;
  max?: number;
  /** Client-side CPU (user + system) per run, ms: the tool's processes or the service process. */
  clientCpuMs?: number[];
  /** Busy CPU of the whole machine (all cores: client, sshd, targets) per run, ms. */
  machineCpuMs?: number[];
  /** Runs in which every machine answered correctly, of all runs. */
  okRuns?: string;
  note?: string;
}

export interface Check {
  name: string;
  value: number;
  /** "x": a ratio; "ms": a time; "n": a count. */
  unit: "x" | "ms" | "n";
  target: string;
  met: boolean;
}

export interface SectionResult {
  title: string;
  measurements: Measurement[];
  checks: Check[];
  notes: string[];
  /** CPU profile summary of the service, when one was taken. */
  profile?: unknown;
  /** Further figures of the section for the JSON file. */
  data?: unknown;
}
