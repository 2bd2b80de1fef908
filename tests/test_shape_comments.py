"A shape comment on every line of the library that changes a tensor's shape (issue #36): `x.flatten(2).transpose(1, 2)  # [B, H*W, C]`."
import ast, io, re, tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sdcourse"

# What changes a tensor's shape: reshaping methods, joining and splitting, a new axis by indexing with None, resizing and pooling.
RESHAPES = re.compile(
    r"\.(view|view_as|reshape|reshape_as|flatten|unflatten|transpose|permute|squeeze|unsqueeze|expand|expand_as|repeat|repeat_interleave"
    r"|chunk|split|movedim)\((?!\)|\"\")"         # `.split()` and `.split("x")` split a str
    r"|(?<!\bself)(?<!\bschedule)\.m?T\b"          # a transpose (`self.T` and `schedule.T` are a number of timesteps)
    r"|\b(torch|np)\.(cat|stack|concatenate|chunk|split|flatten|einsum)\("
    r"|\bF\.(interpolate|avg_pool2d|max_pool2d|adaptive_avg_pool2d|pad|pixel_shuffle)\(|\bnn\.(Upsample|AvgPool2d|MaxPool2d|Flatten)\("
    r"|[\w\)\]]\[[^\[\]]*\bNone\b")                # x[:, None], x[None]: a new axis
SHAPE = re.compile(r"\[[^\]]*\]")  # a comment that writes a shape: [B, 77, D]

# Lines that are not model code, by (module, function); None: the whole module.
ALLOWED = {
    ("exercises", None): "the checkers build inputs and typical wrong answers to compare a learner's function with; the shapes are in their hints",
    ("pipeline", "adaptation_cache"): "the command line stacking a user's images to adapt to (its shape is said on the next line); not model code",
}


def statements(source):
    "(first line, code with its strings blanked, the comments on its own lines) of every statement of `source`."
    found, code, comments, first = [], [], [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING): continue
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if code: found.append((first, "".join(code), " ".join(comments)))
            code, comments, first = [], [], None
        elif tok.type == tokenize.COMMENT:
            if code: comments.append(tok.string)  # a comment line above a statement is not its comment
        else:
            first = first or tok.start[0]
            text = tok.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", None), getattr(tokenize, "TSTRING_MIDDLE", None))
            code.append('""' if text else tok.string)  # what a string says is not code (Python 3.12 splits an f-string into pieces)
    return found


def unannotated(source):
    "First lines of the statements that change a tensor's shape without a shape in their comment."
    return [line for line, code, comment in statements(source) if RESHAPES.search(code) and not SHAPE.search(comment)]


def functions(source):
    "{line: name of the outermost function around it}."
    owner = {}
    for node in ast.parse(source).body:
        for sub in ([node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else getattr(node, "body", []) if isinstance(node, ast.ClassDef) else []):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)): owner |= dict.fromkeys(range(sub.lineno, sub.end_lineno + 1), sub.name)
    return owner


def test_the_check_finds_what_it_should():
    planted = '''
def forward(self, x, t):
    h = x.flatten(2).transpose(1, 2)
    h = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
    # [B, C] below: a comment above a line does not count
    w = t[:, None]
    parts = "a b".split()
    n = self.T - 1
    print(f"x.view(2) {x!r}")  # in a string: not code
    z = torch.cat([x,
                   x])  # [2B, C, H, W]: a statement over two lines, its comment on either
'''
    assert unannotated(planted) == [3, 6]


def test_every_reshaping_line_of_the_library_says_its_shape():
    missing, counted = [], 0
    for path in sorted(ROOT.glob("*.py")):
        if path.name.startswith("_") or (path.stem, None) in ALLOWED: continue
        source = path.read_text()
        owner, lines = functions(source), source.splitlines()
        counted += sum(bool(RESHAPES.search(code)) for _, code, _ in statements(source))
        missing += [f"{path.name}:{n}: {lines[n - 1].strip()[:100]}" for n in unannotated(source) if (path.stem, owner.get(n)) not in ALLOWED]
    assert counted > 50  # the check reads the library's reshaping lines
    assert not missing, "a line that changes a tensor's shape needs a comment with the shape, e.g. `# [B, H*W, C]`:\n" + "\n".join(missing)
