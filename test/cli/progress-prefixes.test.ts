/**
 * The names `--log-format bar-with-logs` puts before a derivation's lines are held only while it can log:
 * a run of many derivations does not keep one per derivation (the 100,000-goal memory target). The bytes
 * out are compared with nix-store in test/cli/log-formats.test.ts.
 */
import { EventEmitter } from 'eventemitter3';
import { describe, expect, it } from 'vitest';
import type { BuildEngine } from '../../src/index.js';
import { ProgressDisplay, type LinePrefixes } from '../../src/cli/progress.js';

const drv = (i: number) => `/nix/store/${String(i).padStart(32, '0')}-pkg${i}-1.0.drv`;

describe('bar-with-logs prefixes', () => {
  it("are dropped at the build's end (the builder's) and the goal's (the post-build hook's), the lines unchanged", () => {
    const engine = new EventEmitter();
    const written: string[] = [];
    const display = new ProgressDisplay(engine as unknown as BuildEngine, { write: (d) => written.push(String(d)) }, { namePrefix: true, quiet: true });
    const held = () => (display as unknown as { prefixes: LinePrefixes }).prefixes.size;
    for (let i = 0; i < 50; i++) {
      engine.emit('build-log', { drvPath: drv(i), line: `line ${i}  ` });
      engine.emit('build-log', { drvPath: drv(i), line: 'again' });
    }
    expect(held()).toBe(50);
    for (let i = 0; i < 50; i++) {
      engine.emit('build-finished', { drvPath: drv(i), round: 1, rounds: 1, outcome: 'success' });
      engine.emit('post-build-hook-log', { drvPath: drv(i), line: 'hook' });
    }
    expect(held()).toBe(50);
    // A second round logs under the same name again.
    engine.emit('build-log', { drvPath: drv(0), line: 'round 2' });
    engine.emit('build-finished', { drvPath: drv(0), round: 2, rounds: 2, outcome: 'success' });
    for (let i = 0; i < 50; i++) engine.emit('goal-finished', { kind: 'derivation', path: drv(i), result: { status: 'built' } });
    expect(held()).toBe(0);
    expect(written.slice(0, 2).join('')).toBe('pkg0> line 0\npkg0> again\n');
    expect(written.slice(100, 102).join('')).toBe('pkg0 (post)> hook\npkg1 (post)> hook\n');
    expect(written[150]).toBe('pkg0> round 2\n');
    expect(written).toHaveLength(151);
    display.stop();
  });
});
