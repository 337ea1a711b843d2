import type { ChildProcess } from 'node:child_process';

/** Kill a child process with SIGKILL once it has printed BUILDING on its stdout (a build under way), and wait for it to end. */
export async function killOnceBuilding(child: ChildProcess): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      if (c.toString().includes('BUILDING')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the child exited (${code}) before building`)));
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}
