/**
 * The baseline tools: installs the Debian packages that are missing, and
 * builds the command lines of parallel-ssh, Ansible and OpenSSH against the
 * bench fleet.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";

const PACKAGES: { pkg: string; binary: string }[] = [
  { pkg: "openssh-client", binary: "ssh" },
  { pkg: "pssh", binary: "parallel-ssh" },
  { pkg: "ansible", binary: "ansible" },
];

function onPath(binary: string): boolean {
  try {
    execFileSync("/bin/sh", ["-c", `command -v ${binary}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** apt-get installs the packages whose binaries are missing; returns what it installed. */
export function ensureTools(log: (line: string) => void): string[] {
  const missing = PACKAGES.filter((p) => !onPath(p.binary)).map((p) => p.pkg);
  if (missing.length === 0) return [];
  log(`installing with apt-get: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  execFileSync("apt-get", ["update", "-q"], { stdio: "inherit", env, timeout: 300_000 });
  execFileSync("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...missing], { stdio: "inherit", env, timeout: 600_000 });
  return missing;
}

/** First line a `--version`-style command prints (on stdout or, like `ssh -V`, stderr). */
export function versionOf(argv: string[]): string {
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
  const text = `${r.stdout ?? ""}\n${r.stderr ?? ""}`;
  return text.split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "unknown";
}

export interface ToolFiles {
  dir: string;
  keyFile: string;
  hostsFile: string;
  inventoryFile: string;
}

/** Writes the client key (0600), a hosts file and an Ansible inventory into `dir`. */
export function writeToolFiles(dir: string, fleet: { port: number; addresses: string[]; clientKey: { privateKey: string } }, user: string): ToolFiles {
  const keyFile = path.join(dir, "client_key");
  writeFileSync(keyFile, fleet.clientKey.privateKey, { mode: 0o600 });
  const hostsFile = path.join(dir, "hosts");
  writeFileSync(hostsFile, fleet.addresses.join("\n") + "\n");
  const inventoryFile = path.join(dir, "inventory.ini");
  writeFileSync(
    inventoryFile,
    [
      "[fleet]",
      ...fleet.addresses,
      "",
      "[fleet:vars]",
      `ansible_port=${fleet.port}`,
      `ansible_user=${user}`,
      `ansible_ssh_private_key_file=${keyFile}`,
      "ansible_python_interpreter=/usr/bin/python3",
      "",
    ].join("\n"),
  );
  return { dir, keyFile, hostsFile, inventoryFile };
}

/** OpenSSH client options shared by every OpenSSH-based tool. */
export function sshOptions(files: ToolFiles, port: number, extra: string[] = []): string[] {
  return [
    "-F", "/dev/null",
    "-i", files.keyFile,
    "-p", String(port),
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=60",
    ...extra,
  ];
}

export const CURVE25519 = ["-o", "KexAlgorithms=curve25519-sha256"];
