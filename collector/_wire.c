/* The C wire core: one walk over an OTLP ExportTraceServiceRequest that checks its framing,
 * groups spans by trace ID, cuts each trace's fragment (sharing each resource's bytes) and
 * gathers each trace's facts. Same interface and results as the pure-Python twin (wire_py.py);
 * the rules it checks, and the wording of its errors, are those of wire_check.py.
 *
 * The walk reads each byte of the path to the spans once and copies each span once, into its
 * trace's fragment; no Python object is made per span, only per trace (its ID, fragment, facts)
 * and per resource (its shared head).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define DEPTH_LIMIT 100
#define MAX_BODY (64 << 20)
#define FACTS_SIZE 40
#define FACTS_VERSION 1
#define ROOT 0x01
#define TRACE_STATE 0x02
#define SAMPLED 0x04
#define STATUS_OTHER 0x40
#define SHARED_MAX 4096
#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL
#define DEFAULT_SALT "default-hash-seed"

static PyObject *WireError;      /* tailsampler.collector.wire_errors.WireError */
static PyObject *shared_heads;   /* resource head -> the one bytes object for it */
static uint64_t seed0, seed1;    /* keys the trace table's hash against crafted collisions */
static uint64_t default_salt;    /* FNV-1a 64 of the probabilistic policy's default salt */

/* Whether ``o`` is bytes; if not, a TypeError naming ``what`` is set. */
static int is_bytes(PyObject *o, const char *what) {
    if (PyBytes_Check(o)) return 1;
    PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.100s", what, Py_TYPE(o)->tp_name);
    return 0;
}

/* ---- growable arrays ------------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap, item;
} Vec;

static void *vec_push(Vec *v) {
    if (v->len == v->cap) {
        Py_ssize_t cap = v->cap ? v->cap * 2 : 64;
        char *data = PyMem_Realloc(v->data, (size_t)cap * (size_t)v->item);
        if (!data) {
            PyErr_NoMemory();
            return NULL;
        }
        v->data = data;
        v->cap = cap;
    }
    return v->data + (v->len++) * v->item;
}

#define VEC_AT(v, type, i) (((type *)(v).data)[i])

/* ---- what the walk gathers ------------------------------------------------------------- */

typedef struct {   /* a resource or scope field kept as it is: tag byte, payload */
    Py_ssize_t off, len;
    uint8_t tag;
} Range;

typedef struct {
    Py_ssize_t ranges_begin, ranges_end;  /* in Walk.resource_ranges */
    PyObject *head;                        /* shared bytes of its fields, NULL when it has none */
    Py_ssize_t head_len;
    Py_ssize_t roots;                      /* accepted spans without a parent under it */
} Resource;

typedef struct {
    Py_ssize_t ranges_begin, ranges_end;  /* in Walk.scope_ranges */
    Py_ssize_t resource;
    Py_ssize_t head_len;                   /* its scope and schema_url fields, framed */
} Scope;

typedef struct {
    Py_ssize_t off, len;   /* the span's payload in the body */
    Py_ssize_t scope;
    Py_ssize_t next;       /* the trace's next span, or -1 */
} SpanRec;

typedef struct {
    uint8_t id[16];
    Py_ssize_t first, last;  /* spans, in request order */
    uint32_t spans;
    uint8_t bits;
    uint64_t start, end;
} Trace;

typedef struct {   /* the fact fields of one span, last occurrence winning */
    const uint8_t *trace_id, *span_id;
    Py_ssize_t trace_id_len, span_id_len, state_len, parent_len;
    uint64_t start, end;
    uint32_t flags;
    int32_t code;
} SpanFields;

typedef struct {
    const uint8_t *base;
    int depth;
    char error[200];
    Vec resources, scopes, spans, traces, resource_ranges, scope_ranges;
    Py_ssize_t *table;  /* open addressing: trace index or -1 */
    Py_ssize_t table_mask;
    Py_ssize_t rejected;
} Walk;

static int fail(Walk *w, const char *format, ...) {
    va_list args;
    va_start(args, format);
    PyOS_vsnprintf(w->error, sizeof w->error, format, args);
    va_end(args);
    return -1;
}

#define AT(w, p) ((Py_ssize_t)((p) - (w)->base))

/* ---- framing --------------------------------------------------------------------------- */

static int varint_slow(Walk *w, const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return fail(w, "truncated varint at byte %zd", AT(w, *pp));
        uint8_t byte = *p++;
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (byte < 0x80) {
            *out = value;
            *pp = p;
            return 0;
        }
    }
    return fail(w, "varint longer than 10 bytes at byte %zd", AT(w, *pp));
}

static inline int varint(Walk *w, const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    if (*pp < end && **pp < 0x80) {
        *out = *(*pp)++;
        return 0;
    }
    return varint_slow(w, pp, end, out);
}

/* The next field's tag; refuses what no message may hold outside a group. */
static inline int next_field(Walk *w, const uint8_t **pp, const uint8_t *end, uint32_t *number, int *wire) {
    const uint8_t *at = *pp;
    uint64_t tag;
    if (varint(w, pp, end, &tag) < 0) return -1;
    if (*pp - at > 5 || tag > 0xFFFFFFFFULL) return fail(w, "invalid tag at byte %zd", AT(w, at));
    *number = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    if (*wire == 4) return fail(w, "end-group tag without a group at byte %zd", AT(w, at));
    if (*number == 0) return fail(w, "field number 0 at byte %zd", AT(w, at));
    return 0;
}

static inline int length(Walk *w, const uint8_t *at, const uint8_t **pp, const uint8_t *end, Py_ssize_t *out) {
    uint64_t n;
    if (varint(w, pp, end, &n) < 0) return -1;
    if (n > (uint64_t)(end - *pp))
        return fail(w, "length %llu at byte %zd runs past the end of its message", (unsigned long long)n, AT(w, at));
    *out = (Py_ssize_t)n;
    return 0;
}

static inline int enter(Walk *w, const uint8_t *at) {
    if (--w->depth < 0) return fail(w, "nesting deeper than %d levels at byte %zd", DEPTH_LIMIT, AT(w, at));
    return 0;
}

static int skip(Walk *w, uint32_t number, int wire, const uint8_t *at, const uint8_t **pp, const uint8_t *end);

static int group(Walk *w, uint32_t number, const uint8_t *at, const uint8_t **pp, const uint8_t *end) {
    if (enter(w, at) < 0) return -1;
    while (*pp < end) {
        const uint8_t *inner = *pp;
        uint64_t tag;
        if (varint(w, pp, end, &tag) < 0) return -1;
        if (*pp - inner > 5 || tag > 0xFFFFFFFFULL) return fail(w, "invalid tag at byte %zd", AT(w, inner));
        if ((tag & 7) == 4) {
            if ((tag >> 3) != number)
                return fail(w, "end-group tag at byte %zd does not close the group at byte %zd", AT(w, inner), AT(w, at));
            w->depth++;
            return 0;
        }
        if (skip(w, (uint32_t)(tag >> 3), (int)(tag & 7), inner, pp, end) < 0) return -1;
    }
    return fail(w, "group at byte %zd is not closed", AT(w, at));
}

/* Past the value of a field read only for its framing; *pp is where the value starts. */
static int skip(Walk *w, uint32_t number, int wire, const uint8_t *at, const uint8_t **pp, const uint8_t *end) {
    uint64_t ignored;
    Py_ssize_t n = 0;
    switch (wire) {
    case 0:
        return varint(w, pp, end, &ignored);
    case 1:
    case 5: {
        int size = wire == 1 ? 8 : 4;
        if (end - *pp < size) return fail(w, "truncated fixed%d at byte %zd", size * 8, AT(w, at));
        *pp += size;
        return 0;
    }
    case 2:
        if (length(w, at, pp, end, &n) < 0) return -1;
        *pp += n;
        return 0;
    case 3:
        return group(w, number, at, pp, end);
    default:
        return fail(w, "invalid wire type %d at byte %zd", wire, AT(w, at));
    }
}

/* ---- traces ---------------------------------------------------------------------------- */

static inline uint64_t trace_hash(const uint8_t *id) {
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    uint64_t h = (a ^ seed0) * 0x9E3779B97F4A7C15ULL;
    h = (h ^ (h >> 32) ^ b ^ seed1) * 0xC2B2AE3D27D4EB4FULL;
    return h ^ (h >> 29);
}

static int table_grow(Walk *w) {
    Py_ssize_t size = w->table ? (w->table_mask + 1) * 2 : 64;
    Py_ssize_t *table = PyMem_Malloc((size_t)size * sizeof(Py_ssize_t));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) table[i] = -1;
    for (Py_ssize_t t = 0; t < w->traces.len; t++) {
        Py_ssize_t slot = (Py_ssize_t)(trace_hash(VEC_AT(w->traces, Trace, t).id) & (uint64_t)(size - 1));
        while (table[slot] >= 0) slot = (slot + 1) & (size - 1);
        table[slot] = t;
    }
    PyMem_Free(w->table);
    w->table = table;
    w->table_mask = size - 1;
    return 0;
}

static Trace *trace_of(Walk *w, const uint8_t *id) {
    if (!w->table || 2 * (w->traces.len + 1) > w->table_mask + 1) {
        if (table_grow(w) < 0) return NULL;
    }
    Py_ssize_t slot = (Py_ssize_t)(trace_hash(id) & (uint64_t)w->table_mask);
    for (;;) {
        Py_ssize_t t = w->table[slot];
        if (t < 0) break;
        Trace *trace = &VEC_AT(w->traces, Trace, t);
        if (memcmp(trace->id, id, 16) == 0) return trace;
        slot = (slot + 1) & w->table_mask;
    }
    Trace *trace = vec_push(&w->traces);
    if (!trace) return NULL;
    w->table[slot] = w->traces.len - 1;
    memcpy(trace->id, id, 16);
    trace->first = trace->last = -1;
    trace->spans = 0;
    trace->bits = 0;
    trace->start = UINT64_MAX;
    trace->end = 0;
    return trace;
}

static const uint8_t ZERO[16];

static int add_span(Walk *w, const SpanFields *f, const uint8_t *payload, Py_ssize_t len, Py_ssize_t scope) {
    if (f->trace_id_len != 16 || f->span_id_len != 8 || memcmp(f->trace_id, ZERO, 16) == 0 ||
        memcmp(f->span_id, ZERO, 8) == 0) {
        w->rejected++;
        return 0;
    }
    Trace *trace = trace_of(w, f->trace_id);
    if (!trace) return -1;
    SpanRec *span = vec_push(&w->spans);
    if (!span) return -1;
    Py_ssize_t index = w->spans.len - 1;
    span->off = AT(w, payload);
    span->len = len;
    span->scope = scope;
    span->next = -1;
    if (trace->last >= 0)
        VEC_AT(w->spans, SpanRec, trace->last).next = index;
    else
        trace->first = index;
    trace->last = index;
    trace->spans++;
    if (f->parent_len == 0) VEC_AT(w->resources, Resource, VEC_AT(w->scopes, Scope, scope).resource).roots++;
    trace->bits |= (f->parent_len == 0 ? ROOT : 0) | (f->state_len > 0 ? TRACE_STATE : 0) | (f->flags & 1 ? SAMPLED : 0) |
                   (f->code >= 0 && f->code <= 2 ? 0x08 << f->code : STATUS_OTHER);
    if (f->start < trace->start) trace->start = f->start;
    if (f->end > trace->end) trace->end = f->end;
    return 0;
}

/* ---- the messages on the path to the spans --------------------------------------------- */

static inline uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v; /* little-endian hosts only: setup.py builds the extension for those */
}

static int walk_status(Walk *w, const uint8_t *p, const uint8_t *end, int32_t *code) {
    while (p < end) {
        const uint8_t *at = p;
        uint32_t number = 0;
        int wire = 0;
        if (next_field(w, &p, end, &number, &wire) < 0) return -1;
        if (number == 3 && wire == 0) {
            uint64_t v;
            if (varint(w, &p, end, &v) < 0) return -1;
            *code = (int32_t)(uint32_t)v;
        } else if (skip(w, number, wire, at, &p, end) < 0) {
            return -1;
        }
    }
    return 0;
}

static int walk_span(Walk *w, const uint8_t *p, const uint8_t *end, SpanFields *f) {
    while (p < end) {
        const uint8_t *at = p;
        uint32_t number = 0;
        int wire = 0;
        Py_ssize_t n = 0;
        if (next_field(w, &p, end, &number, &wire) < 0) return -1;
        if (wire == 2 && (number > 4 && number != 15) && p < end && *p < 0x80) {
            /* the fields read past, attributes above all: a length of one byte, skipped here */
            n = *p++;
            if (n > end - p) return fail(w, "length %llu at byte %zd runs past the end of its message", (unsigned long long)n, AT(w, at));
            p += n;
        } else if (wire == 2 && number <= 4) {
            if (length(w, at, &p, end, &n) < 0) return -1;
            switch (number) {
            case 1: f->trace_id = p; f->trace_id_len = n; break;
            case 2: f->span_id = p; f->span_id_len = n; break;
            case 3: f->state_len = n; break;
            case 4: f->parent_len = n; break;
            }
            p += n;
        } else if (wire == 1 && (number == 7 || number == 8)) {
            if (end - p < 8) return fail(w, "truncated fixed64 at byte %zd", AT(w, at));
            if (number == 7) f->start = le64(p); else f->end = le64(p);
            p += 8;
        } else if (wire == 2 && number == 15) {
            if (length(w, at, &p, end, &n) < 0 || enter(w, at) < 0) return -1;
            if (walk_status(w, p, p + n, &f->code) < 0) return -1;
            w->depth++;
            p += n;
        } else if (wire == 5 && number == 16) {
            if (end - p < 4) return fail(w, "truncated fixed32 at byte %zd", AT(w, at));
            f->flags = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            p += 4;
        } else if (skip(w, number, wire, at, &p, end) < 0) {
            return -1;
        }
    }
    return 0;
}

/* A resource or scope message: fields 1 and 3 are kept as ranges, 2 is walked by ``child``. */
typedef int (*Child)(Walk *w, const uint8_t *p, const uint8_t *end, Py_ssize_t owner);

static int walk_envelope(Walk *w, const uint8_t *p, const uint8_t *end, Vec *ranges, Child child, Py_ssize_t owner) {
    while (p < end) {
        const uint8_t *at = p;
        uint32_t number = 0;
        int wire = 0;
        Py_ssize_t n = 0;
        if (next_field(w, &p, end, &number, &wire) < 0) return -1;
        if (wire == 2 && number >= 1 && number <= 3) {
            if (length(w, at, &p, end, &n) < 0) return -1;
            if (number == 2) {
                if (enter(w, at) < 0 || child(w, p, p + n, owner) < 0) return -1;
                w->depth++;
            } else {
                Range *range = vec_push(ranges);
                if (!range) return -1;
                range->off = AT(w, p);
                range->len = n;
                range->tag = number == 1 ? 0x0A : 0x1A;
            }
            p += n;
        } else if (skip(w, number, wire, at, &p, end) < 0) {
            return -1;
        }
    }
    return 0;
}

static int walk_one_span(Walk *w, const uint8_t *p, const uint8_t *end, Py_ssize_t scope) {
    SpanFields f = {0};
    if (walk_span(w, p, end, &f) < 0) return -1;
    return add_span(w, &f, p, end - p, scope);
}

static int walk_scope_spans(Walk *w, const uint8_t *p, const uint8_t *end, Py_ssize_t resource) {
    Scope *scope = vec_push(&w->scopes);
    if (!scope) return -1;
    Py_ssize_t index = w->scopes.len - 1;
    scope->resource = resource;
    scope->ranges_begin = w->scope_ranges.len;
    if (walk_envelope(w, p, end, &w->scope_ranges, walk_one_span, index) < 0) return -1;
    VEC_AT(w->scopes, Scope, index).ranges_end = w->scope_ranges.len;
    return 0;
}

static int walk_resource_spans(Walk *w, const uint8_t *p, const uint8_t *end, Py_ssize_t unused) {
    (void)unused;
    Resource *resource = vec_push(&w->resources);
    if (!resource) return -1;
    Py_ssize_t index = w->resources.len - 1;
    resource->head = NULL;
    resource->roots = 0;
    resource->ranges_begin = w->resource_ranges.len;
    if (walk_envelope(w, p, end, &w->resource_ranges, walk_scope_spans, index) < 0) return -1;
    VEC_AT(w->resources, Resource, index).ranges_end = w->resource_ranges.len;
    return 0;
}

static int walk_request(Walk *w, const uint8_t *p, const uint8_t *end) {
    while (p < end) {
        const uint8_t *at = p;
        uint32_t number = 0;
        int wire = 0;
        Py_ssize_t n = 0;
        if (next_field(w, &p, end, &number, &wire) < 0) return -1;
        if (wire == 2 && number == 1) {
            if (length(w, at, &p, end, &n) < 0 || enter(w, at) < 0) return -1;
            if (walk_resource_spans(w, p, p + n, 0) < 0) return -1;
            w->depth++;
            p += n;
        } else if (skip(w, number, wire, at, &p, end) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- fragments ------------------------------------------------------------------------- */

static inline Py_ssize_t varint_size(Py_ssize_t n) {
    Py_ssize_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

static inline uint8_t *put_varint(uint8_t *out, Py_ssize_t n) {
    while (n >= 0x80) {
        *out++ = (uint8_t)(n | 0x80);
        n >>= 7;
    }
    *out++ = (uint8_t)n;
    return out;
}

static inline Py_ssize_t field_size(Py_ssize_t n) { return 1 + varint_size(n) + n; }

/* Framed fields kept as ranges: the ``0x0A`` ones first, then the ``0x1A`` ones. */
static Py_ssize_t ranges_size(const Vec *ranges, Py_ssize_t begin, Py_ssize_t end) {
    Py_ssize_t size = 0;
    for (Py_ssize_t i = begin; i < end; i++) size += field_size(VEC_AT(*ranges, Range, i).len);
    return size;
}

static uint8_t *put_ranges(uint8_t *out, const uint8_t *base, const Vec *ranges, Py_ssize_t begin, Py_ssize_t end) {
    for (int pass = 0; pass < 2; pass++) {
        uint8_t tag = pass ? 0x1A : 0x0A;
        for (Py_ssize_t i = begin; i < end; i++) {
            const Range *r = &VEC_AT(*ranges, Range, i);
            if (r->tag != tag) continue;
            *out++ = tag;
            out = put_varint(out, r->len);
            memcpy(out, base + r->off, (size_t)r->len);
            out += r->len;
        }
    }
    return out;
}

static int make_heads(Walk *w) {
    for (Py_ssize_t i = 0; i < w->scopes.len; i++) {
        Scope *s = &VEC_AT(w->scopes, Scope, i);
        s->head_len = ranges_size(&w->scope_ranges, s->ranges_begin, s->ranges_end);
    }
    for (Py_ssize_t i = 0; i < w->resources.len; i++) {
        Resource *r = &VEC_AT(w->resources, Resource, i);
        r->head_len = ranges_size(&w->resource_ranges, r->ranges_begin, r->ranges_end);
        if (!r->head_len) continue;
        PyObject *head = PyBytes_FromStringAndSize(NULL, r->head_len);
        if (!head) return -1;
        put_ranges((uint8_t *)PyBytes_AS_STRING(head), w->base, &w->resource_ranges, r->ranges_begin, r->ranges_end);
        if (PyDict_GET_SIZE(shared_heads) >= SHARED_MAX) PyDict_Clear(shared_heads);
        PyObject *one = PyDict_SetDefault(shared_heads, head, head);
        Py_XINCREF(one);
        Py_DECREF(head);
        if (!one) return -1;
        r->head = one;
    }
    return 0;
}

typedef struct {  /* one ScopeSpans of a fragment: the trace's spans first..stop (excluded) of one scope */
    Py_ssize_t first, stop, scope, length;
} Group;

typedef struct {  /* one ResourceSpans of a fragment: groups first..stop (excluded) of one resource */
    Py_ssize_t first, stop, resource, length, inner;
} Entry;

typedef struct {
    PyObject_HEAD
    PyObject *pieces;
    PyObject *facts;
} Fragment;

static PyTypeObject FragmentType;

#define SCOPE_OF(w, s) (VEC_AT((w)->spans, SpanRec, s).scope)

/* Group the trace's spans by scope and the groups by resource, measuring each. */
static int measure(Walk *w, const Trace *trace, Vec *groups, Vec *entries) {
    groups->len = entries->len = 0;
    for (Py_ssize_t s = trace->first; s >= 0;) {
        Group *g = vec_push(groups);
        if (!g) return -1;
        g->first = s;
        g->scope = SCOPE_OF(w, s);
        g->length = VEC_AT(w->scopes, Scope, g->scope).head_len;
        for (; s >= 0 && SCOPE_OF(w, s) == g->scope; s = VEC_AT(w->spans, SpanRec, s).next)
            g->length += field_size(VEC_AT(w->spans, SpanRec, s).len);
        g->stop = s;
    }
    for (Py_ssize_t g = 0; g < groups->len;) {
        Entry *e = vec_push(entries);
        if (!e) return -1;
        e->first = g;
        e->resource = VEC_AT(w->scopes, Scope, VEC_AT(*groups, Group, g).scope).resource;
        e->inner = 0;
        for (; g < groups->len && VEC_AT(w->scopes, Scope, VEC_AT(*groups, Group, g).scope).resource == e->resource; g++)
            e->inner += field_size(VEC_AT(*groups, Group, g).length);
        e->stop = g;
        e->length = VEC_AT(w->resources, Resource, e->resource).head_len + e->inner;
    }
    return 0;
}

/* Bytes of the own piece that starts at entry ``e`` (after a shared head, or at the start). */
static Py_ssize_t own_length(Walk *w, const Vec *entries, Py_ssize_t e, int after_head) {
    Py_ssize_t length = after_head ? VEC_AT(*entries, Entry, e).inner : 0;
    if (after_head) e++;
    for (; e < entries->len; e++) {
        const Entry *entry = &VEC_AT(*entries, Entry, e);
        length += 1 + varint_size(entry->length);
        if (VEC_AT(w->resources, Resource, entry->resource).head) break;
        length += entry->inner;
    }
    return length;
}

static PyObject *new_piece(Py_ssize_t length, uint8_t **out) {
    PyObject *piece = PyBytes_FromStringAndSize(NULL, length);
    if (piece) *out = (uint8_t *)PyBytes_AS_STRING(piece);
    return piece;
}

/* The trace's fragment: per resource, the entry's tag and length, the shared head, and its
 * ScopeSpans; the bytes between shared heads are one piece each. */
static PyObject *make_fragment(Walk *w, const Trace *trace, Vec *groups, Vec *entries, Py_ssize_t *size) {
    if (measure(w, trace, groups, entries) < 0) return NULL;
    Py_ssize_t count = 1;
    *size = 0;
    for (Py_ssize_t e = 0; e < entries->len; e++) {
        const Entry *entry = &VEC_AT(*entries, Entry, e);
        *size += field_size(entry->length);
        if (VEC_AT(w->resources, Resource, entry->resource).head) count += 2;
    }
    PyObject *pieces = PyList_New(count);
    if (!pieces) return NULL;
    Py_ssize_t piece = 0;
    uint8_t *out;
    PyObject *current = new_piece(own_length(w, entries, 0, 0), &out);
    if (!current) goto error;
    for (Py_ssize_t e = 0; e < entries->len; e++) {
        const Entry *entry = &VEC_AT(*entries, Entry, e);
        PyObject *head = VEC_AT(w->resources, Resource, entry->resource).head;
        *out++ = 0x0A;
        out = put_varint(out, entry->length);
        if (head) {
            PyList_SET_ITEM(pieces, piece++, current);
            Py_INCREF(head);
            PyList_SET_ITEM(pieces, piece++, head);
            current = new_piece(own_length(w, entries, e, 1), &out);
            if (!current) goto error;
        }
        for (Py_ssize_t g = entry->first; g < entry->stop; g++) {
            const Group *group = &VEC_AT(*groups, Group, g);
            const Scope *scope = &VEC_AT(w->scopes, Scope, group->scope);
            *out++ = 0x12;
            out = put_varint(out, group->length);
            out = put_ranges(out, w->base, &w->scope_ranges, scope->ranges_begin, scope->ranges_end);
            for (Py_ssize_t s = group->first; s != group->stop; s = VEC_AT(w->spans, SpanRec, s).next) {
                const SpanRec *span = &VEC_AT(w->spans, SpanRec, s);
                *out++ = 0x12;
                out = put_varint(out, span->len);
                memcpy(out, w->base + span->off, (size_t)span->len);
                out += span->len;
            }
        }
    }
    PyList_SET_ITEM(pieces, piece, current);
    return pieces;
error:
    Py_DECREF(pieces);
    return NULL;
}

static inline uint64_t fnv(const uint8_t *p, Py_ssize_t n, uint64_t state) {
    for (Py_ssize_t i = 0; i < n; i++) state = (state ^ p[i]) * FNV_PRIME;
    return state;
}

static PyObject *facts_record(uint8_t bits, uint32_t spans, uint64_t size, uint64_t start, uint64_t end, uint64_t hash) {
    PyObject *record = PyBytes_FromStringAndSize(NULL, FACTS_SIZE);
    if (!record) return NULL;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(record);
    memset(out, 0, FACTS_SIZE);
    out[0] = FACTS_VERSION;
    out[1] = bits;
    for (int i = 0; i < 4; i++) out[4 + i] = (uint8_t)(spans >> (8 * i));
    for (int i = 0; i < 8; i++) {
        out[8 + i] = (uint8_t)(size >> (8 * i));
        out[16 + i] = (uint8_t)(start >> (8 * i));
        out[24 + i] = (uint8_t)(end >> (8 * i));
        out[32 + i] = (uint8_t)(hash >> (8 * i));
    }
    return record;
}

static PyObject *new_fragment(PyObject *pieces, PyObject *facts) {
    Fragment *fragment = PyObject_New(Fragment, &FragmentType);
    if (!fragment) return NULL;
    fragment->pieces = pieces;
    fragment->facts = facts;
    return (PyObject *)fragment;
}

static PyObject *fragments_of(Walk *w) {
    PyObject *fragments = PyDict_New();
    Vec groups = {NULL, 0, 0, sizeof(Group)}, entries = {NULL, 0, 0, sizeof(Entry)};
    if (!fragments) return NULL;
    for (Py_ssize_t t = 0; t < w->traces.len; t++) {
        const Trace *trace = &VEC_AT(w->traces, Trace, t);
        Py_ssize_t size;
        PyObject *pieces = make_fragment(w, trace, &groups, &entries, &size);
        if (!pieces) goto error;
        PyObject *facts = facts_record(trace->bits, trace->spans, (uint64_t)size, trace->start, trace->end,
                                       fnv(trace->id, 16, default_salt));
        if (!facts) {
            Py_DECREF(pieces);
            goto error;
        }
        PyObject *fragment = new_fragment(pieces, facts);
        if (!fragment) {
            Py_DECREF(pieces);
            Py_DECREF(facts);
            goto error;
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)trace->id, 16);
        int failed = !key || PyDict_SetItem(fragments, key, fragment) < 0;
        Py_XDECREF(key);
        Py_DECREF(fragment);
        if (failed) goto error;
    }
    PyMem_Free(groups.data);
    PyMem_Free(entries.data);
    return fragments;
error:
    PyMem_Free(groups.data);
    PyMem_Free(entries.data);
    Py_DECREF(fragments);
    return NULL;
}

/* Root spans by their resource's shared head (b"" for a resource without fields), so that
 * traces are counted by root service once per resource rather than once per trace. */
static PyObject *root_resources(Walk *w) {
    PyObject *roots = PyDict_New();
    if (!roots) return NULL;
    for (Py_ssize_t i = 0; i < w->resources.len; i++) {
        const Resource *r = &VEC_AT(w->resources, Resource, i);
        if (!r->roots) continue;
        PyObject *key = r->head;
        if (key)
            Py_INCREF(key);
        else if (!(key = PyBytes_FromStringAndSize(NULL, 0)))
            goto error;
        PyObject *before = PyDict_GetItemWithError(roots, key);
        Py_ssize_t count = r->roots;
        if (before) count += PyLong_AsSsize_t(before);
        PyObject *value = !PyErr_Occurred() ? PyLong_FromSsize_t(count) : NULL;
        int failed = !value || PyDict_SetItem(roots, key, value) < 0;
        Py_XDECREF(value);
        Py_DECREF(key);
        if (failed) goto error;
    }
    return roots;
error:
    Py_DECREF(roots);
    return NULL;
}

static void walk_free(Walk *w) {
    for (Py_ssize_t i = 0; i < w->resources.len; i++) Py_XDECREF(VEC_AT(w->resources, Resource, i).head);
    PyMem_Free(w->resources.data);
    PyMem_Free(w->scopes.data);
    PyMem_Free(w->spans.data);
    PyMem_Free(w->traces.data);
    PyMem_Free(w->resource_ranges.data);
    PyMem_Free(w->scope_ranges.data);
    PyMem_Free(w->table);
}

static PyObject *split(PyObject *module, PyObject *body) {
    (void)module;
    if (!is_bytes(body, "an export request body")) return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(body);
    if (size > MAX_BODY) {
        PyErr_Format(WireError, "request body of %zd bytes is over the %d MiB the wire walk accepts", size, MAX_BODY >> 20);
        return NULL;
    }
    Walk w;
    memset(&w, 0, sizeof w);
    w.base = (const uint8_t *)PyBytes_AS_STRING(body);
    w.depth = DEPTH_LIMIT;
    w.resources.item = sizeof(Resource);
    w.scopes.item = sizeof(Scope);
    w.spans.item = sizeof(SpanRec);
    w.traces.item = sizeof(Trace);
    w.resource_ranges.item = w.scope_ranges.item = sizeof(Range);
    PyObject *result = NULL;
    if (walk_request(&w, w.base, w.base + size) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(WireError, w.error);
        goto done;
    }
    if (make_heads(&w) < 0) goto done;
    PyObject *fragments = fragments_of(&w);
    if (!fragments) goto done;
    PyObject *roots = root_resources(&w);
    if (!roots) {
        Py_DECREF(fragments);
        goto done;
    }
    result = Py_BuildValue("(NnnN)", fragments, w.spans.len, w.rejected, roots);
done:
    walk_free(&w);
    return result;
}

/* ---- facts and the probabilistic hash --------------------------------------------------- */

static uint64_t get_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static PyObject *merge_facts(PyObject *module, PyObject *records) {
    (void)module;
    if (!is_bytes(records, "facts")) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(records);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(records);
    if (n == 0 || n % FACTS_SIZE) {
        PyErr_Format(PyExc_ValueError, "facts of %zd bytes are not a whole number of %d-byte records", n, FACTS_SIZE);
        return NULL;
    }
    uint8_t bits = 0;
    uint64_t spans = 0, size = 0, start = UINT64_MAX, end = 0, hash = get_le(p + 32, 8);
    for (Py_ssize_t at = 0; at < n; at += FACTS_SIZE) {
        const uint8_t *r = p + at;
        if (r[0] != FACTS_VERSION) {
            PyErr_Format(PyExc_ValueError, "facts record of another version than %d", FACTS_VERSION);
            return NULL;
        }
        bits |= r[1];
        spans += get_le(r + 4, 4);
        uint64_t more = get_le(r + 8, 8);
        size = size > UINT64_MAX - more ? UINT64_MAX : size + more;
        uint64_t s = get_le(r + 16, 8), e = get_le(r + 24, 8);
        if (s < start) start = s;
        if (e > end) end = e;
    }
    return facts_record(bits, spans > UINT32_MAX ? UINT32_MAX : (uint32_t)spans, size, start, end, hash);
}

static PyObject *fnv1a_64(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "fnv1a_64(data, state=FNV_OFFSET) takes one or two arguments");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t state = FNV_OFFSET;
    if (nargs == 2) {
        state = PyLong_AsUnsignedLongLong(args[1]);
        if (state == (uint64_t)-1 && PyErr_Occurred()) {
            PyBuffer_Release(&data);
            return NULL;
        }
    }
    state = fnv(data.buf, data.len, state);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(state);
}

/* ---- chains: fragments stored with their records ------------------------------------------ */

static int check_fragments(PyObject *fragments) {
    if (!PyList_Check(fragments)) {
        PyErr_Format(PyExc_TypeError, "fragments must be a list, not %.100s", Py_TYPE(fragments)->tp_name);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fragments); i++) {
        if (!PyObject_TypeCheck(PyList_GET_ITEM(fragments, i), &FragmentType)) {
            PyErr_Format(PyExc_TypeError, "fragments must be Fragments, not %.100s", Py_TYPE(PyList_GET_ITEM(fragments, i))->tp_name);
            return -1;
        }
    }
    return 0;
}

#define DIGEST_SIZE 16

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++, v >>= 8) p[i] = (uint8_t)v;
}

/* The digest `digests` maps a resource's fields to (a borrowed reference), or NULL with an error. */
static PyObject *digest_of(PyObject *digests, PyObject *head) {
    PyObject *digest = PyDict_GetItemWithError(digests, head);
    if (!digest) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, head);
        return NULL;
    }
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != DIGEST_SIZE) {
        PyErr_Format(PyExc_ValueError, "a resource digest must be %d bytes", DIGEST_SIZE);
        return NULL;
    }
    return digest;
}

/* The length of a fragment's record and stored body, or -1 with an error. */
static Py_ssize_t chain_size(Fragment *f, PyObject *digests) {
    Py_ssize_t count = PyList_GET_SIZE(f->pieces);
    if (count % 2 == 0) {
        PyErr_SetString(PyExc_ValueError, "a fragment's pieces must alternate its own bytes and resource fields");
        return -1;
    }
    Py_ssize_t total = FACTS_SIZE + 4 + (count / 2) * (4 + DIGEST_SIZE);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *piece = PyList_GET_ITEM(f->pieces, k);
        if (!PyBytes_Check(piece)) {
            PyErr_SetString(PyExc_TypeError, "a fragment's pieces must be bytes");
            return -1;
        }
        if (k % 2 == 0) total += PyBytes_GET_SIZE(piece);
        else if (!digest_of(digests, piece)) return -1;
    }
    return total;
}

/* Write a fragment's record and stored body (measured by chain_size) at `at`; returns its end:
 * the record, u32 n, the lengths of the n own pieces before a resource, the n digests, the own
 * pieces. */
static uint8_t *chain_write(Fragment *f, PyObject *digests, uint8_t *at) {
    Py_ssize_t count = PyList_GET_SIZE(f->pieces), heads = count / 2;
    uint8_t *record = at, *lengths = at + FACTS_SIZE + 4, *refs = lengths + 4 * heads;
    uint8_t *own = refs + DIGEST_SIZE * heads;
    memcpy(record, PyBytes_AS_STRING(f->facts), FACTS_SIZE);
    put_le(record + FACTS_SIZE, (uint64_t)heads, 4);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *piece = PyList_GET_ITEM(f->pieces, k);
        if (k % 2 == 0) {
            memcpy(own, PyBytes_AS_STRING(piece), (size_t)PyBytes_GET_SIZE(piece));
            own += PyBytes_GET_SIZE(piece);
            if (k < count - 1) put_le(lengths + 4 * (k / 2), (uint64_t)PyBytes_GET_SIZE(piece), 4);
        } else {
            memcpy(refs + DIGEST_SIZE * (k / 2), PyBytes_AS_STRING(digest_of(digests, piece)), DIGEST_SIZE);
        }
    }
    put_le(record + 8, (uint64_t)(own - record - FACTS_SIZE), 8);
    return own;
}

/* Each fragment's record, then its stored body, for every fragment in turn (see wire_py.chain). */
static PyObject *chain(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *fragments, *digests;
    if (!PyArg_ParseTuple(args, "OO!:chain", &fragments, &PyDict_Type, &digests)) return NULL;
    if (check_fragments(fragments) < 0) return NULL;
    Py_ssize_t total = 0, n = PyList_GET_SIZE(fragments);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = chain_size((Fragment *)PyList_GET_ITEM(fragments, i), digests);
        if (size < 0) return NULL;
        total += size;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    uint8_t *at = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) at = chain_write((Fragment *)PyList_GET_ITEM(fragments, i), digests, at);
    return out;
}

/* ---- shards: a request's appends, one per shard ------------------------------------------ */

static PyObject *crc32;  /* zlib.crc32: the rule of wire_py.shard_of, called rather than written again */

/* The shard of a trace ID (wire_py.shard_of), or -1 with an error. */
static Py_ssize_t shard_index(PyObject *trace_id, Py_ssize_t shards) {
    if (shards == 1) return 0;
    PyObject *crc = PyObject_CallOneArg(crc32, trace_id);
    if (!crc) return -1;
    unsigned long value = PyLong_AsUnsignedLong(crc);
    Py_DECREF(crc);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
    return (Py_ssize_t)(value % (unsigned long)shards);
}

typedef struct {
    Py_ssize_t index;  /* the shard */
    PyObject *ids, *heads, *seen, *chains;
} ShardAppend;

static void shard_appends_free(ShardAppend *groups, Py_ssize_t used) {
    for (Py_ssize_t i = 0; i < used; i++) {
        Py_XDECREF(groups[i].ids);
        Py_XDECREF(groups[i].heads);
        Py_XDECREF(groups[i].seen);
        Py_XDECREF(groups[i].chains);
    }
    PyMem_Free(groups);
}

/* Add one trace to its shard's append: its ID, its chain and the resources it refers to. */
static int shard_append_add(ShardAppend *g, PyObject *trace_id, Fragment *f, PyObject *digests) {
    Py_ssize_t size = chain_size(f, digests);
    if (size < 0) return -1;
    PyObject *chained = PyBytes_FromStringAndSize(NULL, size);
    if (!chained) return -1;
    chain_write(f, digests, (uint8_t *)PyBytes_AS_STRING(chained));
    int failed = PyList_Append(g->chains, chained) < 0 || PyList_Append(g->ids, trace_id) < 0;
    Py_DECREF(chained);
    for (Py_ssize_t k = 1; !failed && k < PyList_GET_SIZE(f->pieces); k += 2) {
        PyObject *head = PyList_GET_ITEM(f->pieces, k);
        int known = PySet_Contains(g->seen, head);
        failed = known < 0 || (!known && (PySet_Add(g->seen, head) < 0 || PyList_Append(g->heads, head) < 0));
    }
    return failed ? -1 : 0;
}

/* The append of shard `index`, made on its first trace: `slots` is an open-addressing table
 * (`mask` + 1 entries, -1 when free) from shard to append, so that the work is bounded by the
 * request's traces, not by the number of shards. NULL with an error. */
static ShardAppend *shard_append_of(ShardAppend *groups, Py_ssize_t *used, Py_ssize_t *slots, size_t mask, Py_ssize_t index) {
    size_t h = (size_t)index & mask;
    while (slots[h] >= 0 && groups[slots[h]].index != index) h = (h + 1) & mask;
    if (slots[h] >= 0) return &groups[slots[h]];
    ShardAppend *g = &groups[*used];
    g->index = index;
    if (!(g->ids = PyList_New(0)) || !(g->heads = PyList_New(0)) || !(g->seen = PySet_New(NULL)) || !(g->chains = PyList_New(0))) {
        ++*used;  /* freed with the others */
        return NULL;
    }
    slots[h] = (*used)++;
    return g;
}

/* A request's fragments grouped into one append per shard (see wire_py.shard_appends). */
static PyObject *shard_appends(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *fragments, *digests, *trace_id, *value;
    Py_ssize_t shards, pos = 0;
    if (!PyArg_ParseTuple(args, "O!nO!:shard_appends", &PyDict_Type, &fragments, &shards, &PyDict_Type, &digests)) return NULL;
    if (shards < 1) {
        PyErr_SetString(PyExc_ValueError, "shards must be at least 1");
        return NULL;
    }
    size_t traces = (size_t)PyDict_GET_SIZE(fragments), mask = 7;
    while (mask + 1 < 2 * traces) mask = mask * 2 + 1;
    ShardAppend *groups = PyMem_Calloc(traces + 1, sizeof(ShardAppend));
    Py_ssize_t *slots = PyMem_Malloc((mask + 1) * sizeof(Py_ssize_t));
    PyObject *out = NULL;
    Py_ssize_t used = 0;
    if (!groups || !slots) {
        PyErr_NoMemory();
        goto done;
    }
    memset(slots, 0xff, (mask + 1) * sizeof(Py_ssize_t));
    while (PyDict_Next(fragments, &pos, &trace_id, &value)) {
        if (!PyBytes_Check(trace_id) || PyBytes_GET_SIZE(trace_id) != 16) {
            PyErr_SetString(PyExc_ValueError, "a trace ID must be 16 bytes");
            goto done;
        }
        if (!PyObject_TypeCheck(value, &FragmentType)) {
            PyErr_Format(PyExc_TypeError, "fragments must be Fragments, not %.100s", Py_TYPE(value)->tp_name);
            goto done;
        }
        Py_ssize_t index = shard_index(trace_id, shards);
        ShardAppend *g = index < 0 ? NULL : shard_append_of(groups, &used, slots, mask, index);
        if (!g || shard_append_add(g, trace_id, (Fragment *)value, digests) < 0) goto done;
    }
    if (!(out = PyList_New(used))) goto done;
    for (Py_ssize_t i = 0; i < used; i++) {
        ShardAppend *g = &groups[i];
        Py_ssize_t n = PyList_GET_SIZE(g->ids);
        PyObject *hex = PyBytes_FromStringAndSize(NULL, 32 * n);
        if (!hex) {
            Py_CLEAR(out);
            goto done;
        }
        char *at = PyBytes_AS_STRING(hex);
        for (Py_ssize_t t = 0; t < n; t++) {
            const uint8_t *id = (const uint8_t *)PyBytes_AS_STRING(PyList_GET_ITEM(g->ids, t));
            for (int b = 0; b < 16; b++) {
                *at++ = "0123456789abcdef"[id[b] >> 4];
                *at++ = "0123456789abcdef"[id[b] & 15];
            }
        }
        PyObject *item = Py_BuildValue("(nONOO)", g->index, g->ids, hex, g->heads, g->chains);
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    if (groups) shard_appends_free(groups, used);
    PyMem_Free(slots);
    return out;
}

/* A chain back into (the fragments' bytes joined, their merged facts record), each digest
 * replaced by the resource fields `resources` maps it to (KeyError with the digest if missing). */
static PyObject *unchain(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *value, *resources;
    if (!PyArg_ParseTuple(args, "OO!:unchain", &value, &PyDict_Type, &resources)) return NULL;
    if (!is_bytes(value, "a chain")) return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(value), *end = p + PyBytes_GET_SIZE(value);
    PyObject *heads = PyList_New(0);  /* each reference's resource fields, in order */
    if (!heads) return NULL;
    PyObject *data = NULL, *facts = NULL, *merged = NULL;
    Py_ssize_t records = 0, data_len = 0;
    for (const uint8_t *at = p; at < end;) {
        if (end - at < FACTS_SIZE || at[0] != FACTS_VERSION) {
            PyErr_Format(PyExc_ValueError, "not a chain of facts records and fragments at byte %zd", (Py_ssize_t)(at - p));
            goto fail;
        }
        uint64_t n = get_le(at + 8, 8);
        if (n > (uint64_t)(end - at - FACTS_SIZE)) {
            PyErr_Format(PyExc_ValueError, "a fragment of %llu bytes at byte %zd runs past the chain's end", (unsigned long long)n,
                         (Py_ssize_t)(at - p));
            goto fail;
        }
        const uint8_t *body = at + FACTS_SIZE;
        uint64_t count = n >= 4 ? get_le(body, 4) : UINT64_MAX, own = 0;
        if (count > (n - 4) / (4 + DIGEST_SIZE)) {
            PyErr_Format(PyExc_ValueError, "the fragment at byte %zd is not a stored fragment", (Py_ssize_t)(at - p));
            goto fail;
        }
        for (uint64_t i = 0; i < count; i++) own += get_le(body + 4 + 4 * i, 4);
        if (own > n - 4 - (4 + DIGEST_SIZE) * count) {
            PyErr_Format(PyExc_ValueError, "the fragment at byte %zd is not a stored fragment", (Py_ssize_t)(at - p));
            goto fail;
        }
        const uint8_t *refs = body + 4 + 4 * count;
        for (uint64_t i = 0; i < count; i++) {
            PyObject *digest = PyBytes_FromStringAndSize((const char *)refs + DIGEST_SIZE * i, DIGEST_SIZE);
            if (!digest) goto fail;
            PyObject *head = PyDict_GetItemWithError(resources, digest);
            if (!head || !PyBytes_Check(head)) {
                if (head) PyErr_SetString(PyExc_TypeError, "resource fields must be bytes");
                else if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, digest);
                Py_DECREF(digest);
                goto fail;
            }
            Py_DECREF(digest);
            if (PyList_Append(heads, head) < 0) goto fail;
            data_len += PyBytes_GET_SIZE(head);
        }
        data_len += (Py_ssize_t)(n - 4 - (4 + DIGEST_SIZE) * count);
        records++;
        at += FACTS_SIZE + n;
    }
    if (!records) {
        PyErr_SetString(PyExc_ValueError, "an empty chain");
        goto fail;
    }
    data = PyBytes_FromStringAndSize(NULL, data_len);
    facts = PyBytes_FromStringAndSize(NULL, records * FACTS_SIZE);
    if (!data || !facts) goto fail;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(data), *rec = (uint8_t *)PyBytes_AS_STRING(facts);
    Py_ssize_t next_head = 0;
    for (const uint8_t *at = p; at < end;) {
        uint64_t n = get_le(at + 8, 8), count = get_le(at + FACTS_SIZE, 4);
        const uint8_t *lengths = at + FACTS_SIZE + 4, *own = lengths + (4 + DIGEST_SIZE) * count;
        const uint8_t *body_end = at + FACTS_SIZE + n;
        uint8_t *fragment = out;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t length = get_le(lengths + 4 * i, 4);
            memcpy(out, own, (size_t)length);
            out += length;
            own += length;
            PyObject *head = PyList_GET_ITEM(heads, next_head++);
            memcpy(out, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
            out += PyBytes_GET_SIZE(head);
        }
        memcpy(out, own, (size_t)(body_end - own));
        out += body_end - own;
        memcpy(rec, at, FACTS_SIZE);
        put_le(rec + 8, (uint64_t)(out - fragment), 8);
        rec += FACTS_SIZE;
        at = body_end;
    }
    merged = records == 1 ? (Py_INCREF(facts), facts) : merge_facts(NULL, facts);
    if (!merged) goto fail;
    Py_DECREF(heads);
    Py_DECREF(facts);
    return Py_BuildValue("(NN)", data, merged);
fail:
    Py_DECREF(heads);
    Py_XDECREF(data);
    Py_XDECREF(facts);
    return NULL;
}

/* ---- the Fragment type ------------------------------------------------------------------ */

static PyObject *fragment_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"pieces", "facts", NULL};
    PyObject *pieces, *facts;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!S:Fragment", names, &PyList_Type, &pieces, &facts)) return NULL;
    if (PyBytes_GET_SIZE(facts) != FACTS_SIZE) {
        PyErr_Format(PyExc_ValueError, "a facts record is %d bytes, not %zd", FACTS_SIZE, PyBytes_GET_SIZE(facts));
        return NULL;
    }
    Fragment *fragment = (Fragment *)type->tp_alloc(type, 0);
    if (!fragment) return NULL;
    Py_INCREF(pieces);
    Py_INCREF(facts);
    fragment->pieces = pieces;
    fragment->facts = facts;
    return (PyObject *)fragment;
}

static void fragment_dealloc(Fragment *self) {
    Py_XDECREF(self->pieces);
    Py_XDECREF(self->facts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_pieces(Fragment *self, void *closure) {
    (void)closure;
    Py_INCREF(self->pieces);
    return self->pieces;
}

static PyObject *get_facts(Fragment *self, void *closure) {
    (void)closure;
    Py_INCREF(self->facts);
    return self->facts;
}

static const uint8_t *record_of(Fragment *self) { return (const uint8_t *)PyBytes_AS_STRING(self->facts); }

static PyObject *get_size(Fragment *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(get_le(record_of(self) + 8, 8));
}

static PyObject *get_span_count(Fragment *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(get_le(record_of(self) + 4, 4));
}

static PyObject *get_has_root(Fragment *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(record_of(self)[1] & ROOT);
}

static PyObject *get_data(Fragment *self, void *closure) {
    (void)closure;
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (!empty) return NULL;
    PyObject *data = PyObject_CallMethod(empty, "join", "O", self->pieces);
    Py_DECREF(empty);
    return data;
}

static PyObject *fragment_repr(Fragment *self) {
    const uint8_t *r = record_of(self);
    return PyUnicode_FromFormat("Fragment(span_count=%llu, size=%llu)", (unsigned long long)get_le(r + 4, 4),
                                (unsigned long long)get_le(r + 8, 8));
}

static PyGetSetDef fragment_getset[] = {
    {"pieces", (getter)get_pieces, NULL, "the fragment's bytes, in pieces; resource heads are shared", NULL},
    {"facts", (getter)get_facts, NULL, "its facts record (wire_facts)", NULL},
    {"size", (getter)get_size, NULL, "bytes", NULL},
    {"span_count", (getter)get_span_count, NULL, "spans", NULL},
    {"has_root", (getter)get_has_root, NULL, "whether a span without a parent is among them", NULL},
    {"data", (getter)get_data, NULL, "the pieces joined", NULL},
    {NULL},
};

static PyTypeObject FragmentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tailsampler.collector._wire.Fragment",
    .tp_doc = "One trace's share of one request: pieces that joined are TracesData.resource_spans entries, and its facts.",
    .tp_basicsize = sizeof(Fragment),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = fragment_new,
    .tp_dealloc = (destructor)fragment_dealloc,
    .tp_repr = (reprfunc)fragment_repr,
    .tp_getset = fragment_getset,
};

/* ---- the module ------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"split", split, METH_O, "split(body) -> (fragments by trace ID, spans accepted, spans refused)"},
    {"merge_facts", merge_facts, METH_O, "merge_facts(records) -> one facts record for a concatenation of records"},
    {"fnv1a_64", (PyCFunction)(void (*)(void))fnv1a_64, METH_FASTCALL, "fnv1a_64(data, state=FNV offset basis) -> int"},
    {"chain", chain, METH_VARARGS, "chain(fragments, digests) -> each fragment's facts record and stored body, in turn"},
    {"shard_appends", shard_appends, METH_VARARGS,
     "shard_appends(fragments, shards, digests) -> [(shard, trace IDs, their hex forms joined, resources referred to, chains)]"},
    {"unchain", unchain, METH_VARARGS, "unchain(chain, resources) -> (the fragments' bytes joined, their merged facts record)"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_wire", "The C wire core (see tailsampler.collector.wire).", -1, methods,
};

PyMODINIT_FUNC PyInit__wire(void) {
    if (PyType_Ready(&FragmentType) < 0) return NULL;
    PyObject *errors = PyImport_ImportModule("tailsampler.collector.wire_errors");
    if (!errors) return NULL;
    WireError = PyObject_GetAttrString(errors, "WireError");
    Py_DECREF(errors);
    if (!WireError) return NULL;
    PyObject *zlib = PyImport_ImportModule("zlib");
    crc32 = zlib ? PyObject_GetAttrString(zlib, "crc32") : NULL;
    Py_XDECREF(zlib);
    if (!crc32) return NULL;
    shared_heads = PyDict_New();
    if (!shared_heads) return NULL;
    PyObject *os = PyImport_ImportModule("os");
    PyObject *random = os ? PyObject_CallMethod(os, "urandom", "i", 16) : NULL;
    Py_XDECREF(os);
    if (!random) return NULL;
    memcpy(&seed0, PyBytes_AS_STRING(random), 8);
    memcpy(&seed1, PyBytes_AS_STRING(random) + 8, 8);
    default_salt = fnv((const uint8_t *)DEFAULT_SALT, (Py_ssize_t)strlen(DEFAULT_SALT), FNV_OFFSET);
    Py_DECREF(random);
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    Py_INCREF(&FragmentType);
    if (PyModule_AddObject(module, "Fragment", (PyObject *)&FragmentType) < 0 ||
        PyModule_AddStringConstant(module, "CORE", "c") < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
