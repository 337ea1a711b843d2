/**
 * Signals by number and as Nix names them (statusToString with glibc's strsignal): `signal 9 (Killed)`.
 */
import { constants } from 'node:os';

/** glibc's strsignal() descriptions, by signal name (Linux numbering comes from os.constants). */
const DESCRIPTIONS: Readonly<Record<string, string>> = {
  SIGHUP: 'Hangup',
  SIGINT: 'Interrupt',
  SIGQUIT: 'Quit',
  SIGILL: 'Illegal instruction',
  SIGTRAP: 'Trace/breakpoint trap',
  SIGABRT: 'Aborted',
  SIGBUS: 'Bus error',
  SIGFPE: 'Floating point exception',
  SIGKILL: 'Killed',
  SIGUSR1: 'User defined signal 1',
  SIGSEGV: 'Segmentation fault',
  SIGUSR2: 'User defined signal 2',
  SIGPIPE: 'Broken pipe',
  SIGALRM: 'Alarm clock',
  SIGTERM: 'Terminated',
  SIGSTKFLT: 'Stack fault',
  SIGCHLD: 'Child exited',
  SIGCONT: 'Continued',
  SIGSTOP: 'Stopped (signal)',
  SIGTSTP: 'Stopped',
  SIGTTIN: 'Stopped (tty input)',
  SIGTTOU: 'Stopped (tty output)',
  SIGURG: 'Urgent I/O condition',
  SIGXCPU: 'CPU time limit exceeded',
  SIGXFSZ: 'File size limit exceeded',
  SIGVTALRM: 'Virtual timer expired',
  SIGPROF: 'Profiling timer expired',
  SIGWINCH: 'Window changed',
  SIGIO: 'I/O possible',
  SIGPOLL: 'I/O possible',
  SIGPWR: 'Power failure',
  SIGSYS: 'Bad system call',
};

/** `9 (Killed)` for `SIGKILL`; a name Node does not know is kept as it is. */
export function describeSignal(name: string): string {
  const nr = (constants.signals as Record<string, number | undefined>)[name];
  if (nr === undefined) return name;
  const rt = /^SIGRTMIN\+?(\d*)$/.exec(name);
  const text = DESCRIPTIONS[name] ?? (rt ? `Real-time signal ${rt[1] || 0}` : `Unknown signal ${nr}`);
  return `${nr} (${text})`;
}

const NAMES = new Map(Object.entries(constants.signals).map(([name, n]) => [n as number, name]));

/** `SIGKILL` for 9; `SIG<n>` for a number Node has no name for. */
export function signalName(nr: number): string {
  return NAMES.get(nr) ?? `SIG${nr}`;
}
