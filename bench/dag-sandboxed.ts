/**
 * bench/dag.ts with every build sandboxed (issue #4's measure): the same layered DAG on a chroot store,
 * static busybox as the builder, ours with `sandbox: true` against `nix-store --realise --option sandbox
 * true`. Same knobs as bench/dag.ts (REALISE_BENCH_SIZES, REALISE_BENCH_RUNS, REALISE_BENCH_SMALL).
 *
 *   npx tsx bench/dag-sandboxed.ts
 */
import { main } from './dag.js';

main(true).catch((e) => {
  console.error(e);
  process.exit(1);
});
