// docs/cli.md cannot drift from the parser: every command the CLI declares has its section,
// with its usage line exactly as `--help` prints it and every option (long and short
// spelling) and operand it declares; and every command section names a declared command.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { commands } from '../../src/cli/commands/index.js';

const doc = readFileSync(fileURLToPath(new URL('../../../docs/cli.md', import.meta.url)), 'utf8');

/** `## migbridge NAME` sections: name -> text up to the next `## ` heading. */
function sections(): Map<string, string> {
  const out = new Map<string, string>();
  const parts = doc.split(/^## /m).slice(1);
  for (const p of parts) {
    const m = /^migbridge (.+)\n/.exec(p);
    if (m) out.set(m[1]!.trim(), p);
  }
  return out;
}

/** The one command whose entry the lead completes after merging it: a stub section is allowed until it is declared. */
const STUBS = new Set(['migrate']);

test('every declared command has a section with its usage line, every option and every operand', (t) => {
  const docs = sections();
  t.true(commands.length >= 14);
  for (const c of commands) {
    const name = c.name.join(' ');
    const text = docs.get(name);
    if (!text) {
      t.fail(`docs/cli.md has no "## migbridge ${name}" section`);
      continue;
    }
    t.true(text.includes(`\n\`\`\`\nmigbridge ${c.usage}\n\`\`\`\n`), `${name}: the usage line "migbridge ${c.usage}" in a code block`);
    for (const [long, o] of Object.entries(c.options)) {
      t.true(text.includes(`\`--${long}\``), `${name}: option --${long} is documented`);
      if (o.short) t.true(text.includes(`\`-${o.short}\``), `${name}: option -${o.short} (--${long}) is documented`);
    }
    for (const op of c.operands) t.true(text.includes(`\`${op}\``), `${name}: operand ${op} is documented`);
    t.regex(text, /Exit \d|Exit status/, `${name}: exit status`);
    t.regex(text, /JSON: `/, `${name}: JSON output shape`);
  }
});

test('every command section names a declared command (or a stub awaiting its command)', (t) => {
  const declared = new Set(commands.map((c) => c.name.join(' ')));
  for (const name of sections().keys()) t.true(declared.has(name) || STUBS.has(name), `docs/cli.md documents "${name}", which the CLI does not declare`);
});

test('global options and exit statuses are documented', (t) => {
  for (const s of ['`--output=human|json`', '`--help`', '`-h`', '`--version`', '`-V`']) t.true(doc.includes(s), s);
  for (const code of ['| 0 |', '| 1 |', '| 2 |', '| 128+N |']) t.true(doc.includes(code), `exit status ${code}`);
});
