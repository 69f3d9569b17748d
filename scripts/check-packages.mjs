#!/usr/bin/env node
// Checks the published shape of every package after a build: export targets exist, client
// libraries are peer dependencies, core depends on nothing, and no package has an import cycle
// or imports a module it does not declare.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, resolve } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const CLIENTS = ['amqplib', 'kafkajs', 'ioredis', 'mongodb', '@opentelemetry/api'];
const problems = [];
const fail = (pkg, msg) => problems.push(`${pkg}: ${msg}`);

for (const dir of readdirSync(join(root, 'packages'))) {
  const base = join(root, 'packages', dir);
  const pkgPath = join(base, 'package.json');
  if (!existsSync(pkgPath)) continue;
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'));
  const name = pkg.name;
  if (pkg.private) fail(name, 'published packages must not be private');
  if (pkg.type !== 'module') fail(name, 'must be "type": "module"');
  if (!pkg.exports?.['.']) fail(name, 'missing exports["."]');
  if (!pkg.exports?.['./package.json']) fail(name, 'missing exports["./package.json"]');
  for (const [sub, target] of Object.entries(pkg.exports ?? {})) {
    const targets = typeof target === 'string' ? { default: target } : target;
    for (const [cond, file] of Object.entries(targets)) {
      if (cond === '@exactly-once/source') continue;
      if (!existsSync(join(base, file)))
        fail(name, `exports["${sub}"].${cond} -> ${file} does not exist (build first)`);
    }
    if (
      typeof target === 'object' &&
      Object.keys(target).find((c) => c !== '@exactly-once/source') !== 'types'
    ) {
      fail(name, `exports["${sub}"]: "types" must be the first condition after the source condition`);
    }
  }
  const deps = { ...pkg.dependencies };
  const peers = { ...pkg.peerDependencies };
  if (dir === 'core' && Object.keys(deps).length > 0) fail(name, 'core must have no runtime dependencies');
  for (const c of CLIENTS) if (deps[c]) fail(name, `${c} must be a peer dependency, not a dependency`);

  // Imports: declared, and acyclic.
  const files = walk(join(base, 'src')).filter((f) => f.endsWith('.ts'));
  const graph = new Map();
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const edges = [];
    for (const m of text.matchAll(/^\s*(?:import|export)\s+(type\s+)?[^'"]*?from\s+'([^']+)'/gm)) {
      const [, typeOnly, spec] = m;
      if (spec.startsWith('.')) {
        if (!typeOnly) edges.push(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
        continue;
      }
      if (spec.startsWith('node:') || builtinModules.includes(spec)) continue;
      const bare = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
      if (bare === name) continue;
      const declared = deps[bare] || peers[bare];
      if (!declared) fail(name, `${file.slice(root.length + 1)} imports undeclared "${bare}"`);
      if (dir === 'core' && !typeOnly && ['amqplib', 'kafkajs', 'ioredis', 'mongodb'].includes(bare)) {
        fail(name, `core must not import ${bare}`);
      }
    }
    graph.set(file, edges);
  }
  const state = new Map();
  const visit = (f, stack) => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'active') {
      fail(
        name,
        `import cycle: ${[...stack.slice(stack.indexOf(f)), f].map((p) => p.slice(base.length + 1)).join(' -> ')}`,
      );
      return;
    }
    state.set(f, 'active');
    for (const e of graph.get(f) ?? []) visit(e, [...stack, f]);
    state.set(f, 'done');
  };
  for (const f of graph.keys()) visit(f, []);
}

function walk(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

if (problems.length > 0) {
  console.error(`package checks failed:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log('package checks passed');
