/**
 * The syntax error Nix 2.8's JSON library (nlohmann/json) reports for a text that is not JSON, in its words:
 * what Nix prints after `bad JSON log message from builder: ` for a builder's malformed `@nix` line. The
 * text is taken byte by byte (one char per byte, latin1), as that library reads it: positions count bytes,
 * and what it "last read" runs from the start of the last string or number (structural characters and
 * white space after it included).
 */

type Token =
  | 'true literal'
  | 'false literal'
  | 'null literal'
  | 'string literal'
  | 'number literal'
  | "'['"
  | "'{'"
  | "']'"
  | "'}'"
  | "':'"
  | "','"
  | 'end of input'
  | 'error';

const LITERAL_OR_VALUE = "'[', '{', or a literal";
const CONTROL_NAMES = 'NUL SOH STX ETX EOT ENQ ACK BEL BS HT LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 NAK SYN ETB CAN EM SUB ESC FS GS RS US'.split(' ');
const SHORT_ESCAPES: Readonly<Record<number, string>> = { 8: 'b', 9: 't', 10: 'n', 12: 'f', 13: 'r' };
const EOF = -1;

class Lexer {
  private pos = 0;
  private column = 0;
  private ungot = false;
  private current = EOF;
  private read: number[] = [];
  error = '';
  /** Whether the last number was a float out of range (the library's out_of_range.406). */
  overflow: string | undefined;

  constructor(private readonly text: string) {}

  get position(): number {
    return this.column;
  }

  private get(): number {
    this.column++;
    if (this.ungot) this.ungot = false;
    else this.current = this.pos < this.text.length ? this.text.charCodeAt(this.pos++) & 0xff : (this.pos++, EOF);
    if (this.current !== EOF) this.read.push(this.current);
    return this.current;
  }

  private unget(): void {
    this.ungot = true;
    this.column--;
    if (this.current !== EOF) this.read.pop();
  }

  private reset(): void {
    this.read = [this.current];
  }

  /** What the library shows as "last read": control characters as `<U+XXXX>`. */
  lastRead(): string {
    return this.read.map((c) => (c <= 0x1f ? `<U+${c.toString(16).toUpperCase().padStart(4, '0')}>` : String.fromCharCode(c))).join('');
  }

  private fail(message: string): Token {
    this.error = message;
    return 'error';
  }

  scan(): Token {
    if (this.column === 0 && this.text.charCodeAt(0) === 0xef) {
      if (this.get() !== 0xef || this.get() !== 0xbb || this.get() !== 0xbf) return this.fail('invalid BOM; must be 0xEF 0xBB 0xBF if given');
    }
    do this.get();
    while (this.current === 0x20 || this.current === 0x09 || this.current === 0x0a || this.current === 0x0d);
    const c = this.current;
    switch (c) {
      case 0x5b:
        return "'['";
      case 0x5d:
        return "']'";
      case 0x7b:
        return "'{'";
      case 0x7d:
        return "'}'";
      case 0x3a:
        return "':'";
      case 0x2c:
        return "','";
      case 0x74:
        return this.literal('true', 'true literal');
      case 0x66:
        return this.literal('false', 'false literal');
      case 0x6e:
        return this.literal('null', 'null literal');
      case 0x22:
        return this.string();
      case 0:
      case EOF:
        return 'end of input';
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        return this.fail('invalid literal');
    }
  }

  private literal(word: string, token: Token): Token {
    for (let i = 1; i < word.length; i++) if (this.get() !== word.charCodeAt(i)) return this.fail('invalid literal');
    return token;
  }

  private string(): Token {
    this.reset();
    for (;;) {
      const c = this.get();
      if (c === EOF) return this.fail('invalid string: missing closing quote');
      if (c === 0x22) return 'string literal';
      if (c === 0x5c) {
        const e = this.get();
        if (e === 0x75) {
          const hi = this.codepoint();
          if (hi < 0) return this.fail("invalid string: '\\u' must be followed by 4 hex digits");
          if (hi >= 0xd800 && hi <= 0xdbff) {
            if (this.get() !== 0x5c || this.get() !== 0x75) return this.fail('invalid string: surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF');
            const lo = this.codepoint();
            if (lo < 0) return this.fail("invalid string: '\\u' must be followed by 4 hex digits");
            if (lo < 0xdc00 || lo > 0xdfff) return this.fail('invalid string: surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF');
          } else if (hi >= 0xdc00 && hi <= 0xdfff) return this.fail('invalid string: surrogate U+DC00..U+DFFF must follow U+D800..U+DBFF');
        } else if (!'"\\/bfnrt'.includes(String.fromCharCode(e)) || e === EOF) return this.fail('invalid string: forbidden character after backslash');
        continue;
      }
      if (c <= 0x1f) {
        const hex = `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
        const short = SHORT_ESCAPES[c];
        return this.fail(`invalid string: control character U+${hex.slice(2)} (${CONTROL_NAMES[c]}) must be escaped to ${hex}${short ? ` or \\${short}` : ''}`);
      }
      if (c >= 0x80 && !this.utf8(c)) return this.fail('invalid string: ill-formed UTF-8 byte');
    }
  }

  /** Four hex digits after `\u`, or -1. */
  private codepoint(): number {
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const d = parseInt(String.fromCharCode(this.get()), 16);
      if (this.current === EOF || Number.isNaN(d)) return -1;
      v = v * 16 + d;
    }
    return v;
  }

  /** The rest of a UTF-8 sequence starting with `c` (RFC 3629's well-formed sequences). */
  private utf8(c: number): boolean {
    const range = (lo: number, hi: number) => {
      const b = this.get();
      return b >= lo && b <= hi;
    };
    if (c >= 0xc2 && c <= 0xdf) return range(0x80, 0xbf);
    if (c === 0xe0) return range(0xa0, 0xbf) && range(0x80, 0xbf);
    if ((c >= 0xe1 && c <= 0xec) || c === 0xee || c === 0xef) return range(0x80, 0xbf) && range(0x80, 0xbf);
    if (c === 0xed) return range(0x80, 0x9f) && range(0x80, 0xbf);
    if (c === 0xf0) return range(0x90, 0xbf) && range(0x80, 0xbf) && range(0x80, 0xbf);
    if (c >= 0xf1 && c <= 0xf3) return range(0x80, 0xbf) && range(0x80, 0xbf) && range(0x80, 0xbf);
    if (c === 0xf4) return range(0x80, 0x8f) && range(0x80, 0xbf) && range(0x80, 0xbf);
    return false;
  }

  private number(): Token {
    this.reset();
    const digit = (c: number) => c >= 0x30 && c <= 0x39;
    let c = this.current;
    let float = false;
    if (c === 0x2d) {
      c = this.get();
      if (!digit(c)) return this.fail("invalid number; expected digit after '-'");
    }
    if (c !== 0x30) while (digit((c = this.get())));
    else c = this.get();
    if (c === 0x2e) {
      float = true;
      if (!digit(this.get())) return this.fail("invalid number; expected digit after '.'");
      while (digit((c = this.get())));
    }
    if (c === 0x65 || c === 0x45) {
      float = true;
      c = this.get();
      if (c === 0x2b || c === 0x2d) {
        if (!digit(this.get())) return this.fail('invalid number; expected digit after exponent sign');
      } else if (!digit(c)) return this.fail("invalid number; expected '+', '-', or digit after exponent");
      while (digit((c = this.get())));
    }
    this.unget();
    const text = this.read.map((b) => String.fromCharCode(b)).join('');
    if (float && !Number.isFinite(Number(text))) this.overflow ??= text;
    return 'number literal';
  }
}

/**
 * The library's message for `text` when it is not one JSON value (white space around it allowed), or
 * undefined when it is.
 */
export function jsonSyntaxError(text: string): string | undefined {
  const lex = new Lexer(text);
  let token: Token = lex.scan();
  const fail = (context: string, expected?: string): string => {
    const what = token === 'error' ? `${lex.error}; last read: '${lex.lastRead()}'` : `unexpected ${token}`;
    return `[json.exception.parse_error.101] parse error at line 1, column ${lex.position}: syntax error while parsing ${context} - ${what}${expected ? `; expected ${expected}` : ''}`;
  };
  // The containers open around the value being read: true for an object.
  const open: boolean[] = [];
  for (;;) {
    // A value.
    if (token === "'{'") {
      token = lex.scan();
      if (token === "'}'") token = 'true literal';
      else {
        if (token !== 'string literal') return fail('object key', 'string literal');
        if ((token = lex.scan()) !== "':'") return fail('object separator', "':'");
        open.push(true);
        token = lex.scan();
        continue;
      }
    } else if (token === "'['") {
      token = lex.scan();
      if (token === "']'") token = 'true literal';
      else {
        open.push(false);
        continue;
      }
    }
    if (token === 'error') return fail('value');
    if (!['true literal', 'false literal', 'null literal', 'string literal', 'number literal'].includes(token)) return fail('value', LITERAL_OR_VALUE);
    if (lex.overflow !== undefined) return `[json.exception.out_of_range.406] number overflow parsing '${lex.overflow}'`;
    // After a value: close containers, or go on to the next element.
    for (;;) {
      if (open.length === 0) {
        token = lex.scan();
        return token === 'end of input' ? undefined : fail('value', 'end of input');
      }
      const inObject = open[open.length - 1]!;
      token = lex.scan();
      if (token === "','") {
        token = lex.scan();
        if (inObject) {
          if (token !== 'string literal') return fail('object key', 'string literal');
          if ((token = lex.scan()) !== "':'") return fail('object separator', "':'");
          token = lex.scan();
        }
        break;
      }
      if (token === (inObject ? "'}'" : "']'")) {
        open.pop();
        continue;
      }
      return inObject ? fail('object', "'}'") : fail('array', "']'");
    }
  }
}
