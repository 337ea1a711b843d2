/**
 * The SQLite schema of a Nix 2.8 store database (`<state>/db/db.sqlite`, schema version 10), statement
 * for statement as real Nix 2.8 creates it: test/store/interop.test.ts compares `sqlite_master` of a
 * database we made with one `nix-store --add` made. The comments inside the statements are part of the
 * text SQLite keeps, so they are reproduced too.
 */

/** Content of `<state>/db/schema`: Nix 2.8 writes the bare number, without a newline. */
export const NIX_SCHEMA_VERSION = 10;

export const SCHEMA_STATEMENTS: readonly string[] = [
  `CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
)`,
  `CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
)`,
  `CREATE INDEX IndexReferrer on Refs(referrer)`,
  `CREATE INDEX IndexReference on Refs(reference)`,
  `CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end`,
  `CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
)`,
  `CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)`,
];

/**
 * Connection settings of Nix's LocalStore::openDB: foreign keys on, `synchronous = normal`
 * (fsync-metadata = true), WAL journal, checkpoint every 40000 pages, and SQLite's busy handler
 * waiting up to an hour for other processes.
 */
export const BUSY_TIMEOUT_MS = 60 * 60 * 1000;
export const WAL_AUTOCHECKPOINT = 40000;

/** Size of `<state>/db/reserved` (Nix's gc-reserved-space default: 8 MiB). */
export const RESERVED_SIZE = 8 * 1024 * 1024;

/** Content of `<state>/db/ca-schema` once the tables of content-addressed derivations exist (Nix 2.8's version). */
export const NIX_CA_SCHEMA_VERSION = 3;

/**
 * The tables Nix 2.8 adds for content-addressed derivations (`ca-specific-schema.sql`, created when a store
 * is opened with the `ca-derivations` experimental feature): Realisations map a derivation output, named
 * by the derivation's hash modulo, to its path; RealisationsRefs record which realisations one depends on.
 * Statement for statement as Nix creates them (SQLite keeps the comments inside them).
 */
export const CA_SCHEMA_STATEMENTS: readonly string[] = [
  `create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null, -- symbolic output id, usually "out"
    outputPath integer not null,
    signatures text, -- space-separated list
    foreign key (outputPath) references ValidPaths(id) on delete cascade
)`,
  `create index if not exists IndexRealisations on Realisations(drvPath, outputName)`,
  `create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
)`,
  `create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer)`,
  `create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath)`,
];
