/* The whole-body run of ``core.template`` in one pass over the bytes, without a copy per event.

A buffered answer is one body of thousands of events that repeat a learned template but for their
text. ``template.TextTemplate.run_in`` proves each of them with a few byte operations; done in
Python, those operations are most of a conversion's cost. This module does the very same checks in
one walk over the body and hands back the texts of the events it took, so the proof stays where
it is documented (``template.py``) and only its bookkeeping moves here.

run(body, pos, stop, field, prefix, suffix, max_middle, tail=None) -> (end, count, texts)

Takes the events that start at ``pos`` (an event boundary) and before ``stop``, one after the
other, while each is ``field + prefix + middle + suffix + "\n\n"`` followed by the next event's
``field``, and ``middle`` is at most ``max_middle`` bytes of a JSON string's inside as far as bytes
tell (no raw control byte, no unescaped quote, no dangling backslash). With ``tail`` (a counted
template), ``suffix`` is followed by a counter, 1 to 18 digits without a leading zero, and ``tail``
before the ``"\n\n"``. ``end`` is where the first
event not taken starts, ``count`` the events taken, ``texts`` None when none was, a ``str`` when
every middle is plain printable ASCII with no escape (its text is its bytes), else the ``bytes`` of
the JSON array of the middles as strings, which the caller decodes (and checks) with orjson.
The last event of a body is never taken: what follows it is unknown.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The middle at body[start:stop] as a JSON string's inside: -1 if it cannot be one, 1 if it is
   plain printable ASCII with no escape, 0 if it may be one (escapes or UTF-8: orjson decides). */
static int
middle_kind(const unsigned char *body, Py_ssize_t start, Py_ssize_t stop)
{
    int plain = 1;
    for (Py_ssize_t i = start; i < stop; i++) {
        unsigned char c = body[i];
        if (c < 0x20 || c == '"') {
            return -1;
        }
        if (c == '\\') {
            plain = 0;
            i++;
            if (i >= stop || body[i] < 0x20) {
                return -1;
            }
        }
        else if (c >= 0x80) {
            plain = 0;
        }
    }
    return plain;
}

#define MAX_COUNT_DIGITS 18 /* below 2**63: orjson reads any such integer */

/* Where the middle of the payload at body[start:line_end] ends (the payload's middle starts at
   ``start``), or -1 when the payload does not end as the template says: ``suffix``, or with a
   counted template ``suffix`` + counter + ``tail``. Never reads before ``start``. */
static Py_ssize_t
middle_end_of(const unsigned char *body, Py_ssize_t start, Py_ssize_t line_end, const unsigned char *suffix,
              Py_ssize_t S, const unsigned char *tail, Py_ssize_t T)
{
    Py_ssize_t end = line_end;
    if (tail != NULL) {
        if (end - T < start || memcmp(body + end - T, tail, T) != 0) {
            return -1;
        }
        end -= T;
        Py_ssize_t digits = end;
        while (digits > start && body[digits - 1] >= '0' && body[digits - 1] <= '9') {
            digits--;
        }
        Py_ssize_t count = end - digits;
        if (count < 1 || count > MAX_COUNT_DIGITS || (count > 1 && body[digits] == '0')) {
            return -1;
        }
        end = digits;
    }
    if (end - S < start || memcmp(body + end - S, suffix, S) != 0) {
        return -1;
    }
    return end - S;
}

static PyObject *
runs_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "run() takes 7 or 8 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[3]) || !PyBytes_Check(args[4]) || !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "run(): body, field, prefix and suffix must be bytes");
        return NULL;
    }
    const unsigned char *tail = NULL;
    Py_ssize_t T = 0;
    if (nargs == 8 && args[7] != Py_None) {
        if (!PyBytes_Check(args[7])) {
            PyErr_SetString(PyExc_TypeError, "run(): tail must be bytes or None");
            return NULL;
        }
        tail = (const unsigned char *)PyBytes_AS_STRING(args[7]);
        T = PyBytes_GET_SIZE(args[7]);
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_middle = PyLong_AsSsize_t(args[6]);
    if ((pos == -1 || stop == -1 || max_middle == -1) && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *body = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *field = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    const unsigned char *prefix = (const unsigned char *)PyBytes_AS_STRING(args[4]);
    const unsigned char *suffix = (const unsigned char *)PyBytes_AS_STRING(args[5]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t F = PyBytes_GET_SIZE(args[3]), P = PyBytes_GET_SIZE(args[4]), S = PyBytes_GET_SIZE(args[5]);
    if (pos < 0 || pos > size) {
        PyErr_SetString(PyExc_ValueError, "run(): pos out of range");
        return NULL;
    }
    if (stop > size) {
        stop = size;
    }

    /* First pass: prove the events and measure their middles. */
    Py_ssize_t at = pos, count = 0, total = 0;
    int plain = 1;
    while (at < stop) {
        Py_ssize_t start = at + F + P; /* where the middle starts */
        if (start > size || memcmp(body + at, field, F) != 0 || memcmp(body + at + F, prefix, P) != 0) {
            break;
        }
        const unsigned char *lf = memchr(body + start, '\n', size - start);
        if (lf == NULL) {
            break;
        }
        Py_ssize_t line_end = lf - body;               /* the payload is body[at + F:line_end] */
        Py_ssize_t middle_end = middle_end_of(body, start, line_end, suffix, S, tail, T);
        Py_ssize_t next = line_end + 2;                /* where the next event starts */
        if (middle_end < 0 || middle_end - start > max_middle || next + F > size
            || body[line_end + 1] != '\n' || memcmp(body + next, field, F) != 0) {
            break;
        }
        int kind = middle_kind(body, start, middle_end);
        if (kind < 0) {
            break;
        }
        plain &= kind;
        total += middle_end - start;
        count++;
        at = next;
    }
    if (count == 0) {
        return Py_BuildValue("(nnO)", pos, (Py_ssize_t)0, Py_None);
    }

    /* Second pass: copy the middles of the events taken. */
    PyObject *texts;
    unsigned char *out;
    if (plain) {
        texts = PyUnicode_New(total, 127);
        if (texts == NULL) {
            return NULL;
        }
        out = PyUnicode_1BYTE_DATA(texts);
    }
    else {
        texts = PyBytes_FromStringAndSize(NULL, total + 3 * count + 1);
        if (texts == NULL) {
            return NULL;
        }
        out = (unsigned char *)PyBytes_AS_STRING(texts);
        *out++ = '[';
    }
    Py_ssize_t event = pos;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t start = event + F + P;
        Py_ssize_t line_end = (const unsigned char *)memchr(body + start, '\n', size - start) - body;
        Py_ssize_t length = middle_end_of(body, start, line_end, suffix, S, tail, T) - start;
        if (!plain) {
            if (i) {
                *out++ = ',';
            }
            *out++ = '"';
        }
        memcpy(out, body + start, length);
        out += length;
        if (!plain) {
            *out++ = '"';
        }
        event = line_end + 2;
    }
    if (!plain) {
        *out++ = ']';
    }
    PyObject *result = Py_BuildValue("(nnN)", at, count, texts);
    return result;
}

static PyMethodDef runs_methods[] = {
    {"run", (PyCFunction)(void (*)(void))runs_run, METH_FASTCALL,
     "run(body, pos, stop, field, prefix, suffix, max_middle, tail=None) -> (end, count, texts)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef runs_module = {
    PyModuleDef_HEAD_INIT, "_runs", "A whole-body run of a learned chunk template in one pass.", -1, runs_methods,
};

PyMODINIT_FUNC
PyInit__runs(void)
{
    return PyModule_Create(&runs_module);
}
