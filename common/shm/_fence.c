/*
 * Seqlock primitives for the shared-memory frame ring.
 *
 * numpy stores are plain stores: on ARM (Jetson) another core may see the generation change
 * before the pixels it guards. These helpers use the compiler's atomics so that the order
 * "generation odd -> pixels -> generation even" holds on every architecture.
 * Each takes any buffer (mmap, numpy array) and a byte offset of an aligned uint64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static uint64_t *word_at(Py_buffer *view, Py_ssize_t offset)
{
    if (offset < 0 || offset % 8 != 0 || offset + 8 > view->len) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not an aligned uint64 inside a %zd-byte buffer",
                     offset, view->len);
        return NULL;
    }
    return (uint64_t *)((char *)view->buf + offset);
}

/* begin_write(buf, offset) -> odd generation. Pixels written after this call are never seen
 * by a reader that saw the previous even generation and then validates successfully. */
static PyObject *begin_write(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*n", &view, &offset))
        return NULL;
    uint64_t *word = word_at(&view, offset);
    if (!word) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t current = __atomic_load_n(word, __ATOMIC_RELAXED);
    /* Already odd only if a writer died mid-write: move on to the next odd value. */
    uint64_t odd = (current & 1u) ? current + 2u : current + 1u;
    __atomic_store_n(word, odd, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* odd generation before any pixel store */
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(odd);
}

/* end_write(buf, offset) -> even generation that now guards the slot's content. */
static PyObject *end_write(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*n", &view, &offset))
        return NULL;
    uint64_t *word = word_at(&view, offset);
    if (!word) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t even = (__atomic_load_n(word, __ATOMIC_RELAXED) | 1u) + 1u;
    __atomic_store_n(word, even, __ATOMIC_RELEASE); /* every pixel store before the even value */
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(even);
}

/* store_release(buf, offset, value): a release store, for initialising generations. */
static PyObject *store_release(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset;
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "w*nK", &view, &offset, &value))
        return NULL;
    uint64_t *word = word_at(&view, offset);
    if (word)
        __atomic_store_n(word, (uint64_t)value, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    if (!word)
        return NULL;
    Py_RETURN_NONE;
}

/* load_acquire(buf, offset) -> generation; reads of the pixels after it see at least this write. */
static PyObject *load_acquire(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "y*n", &view, &offset))
        return NULL;
    uint64_t *word = word_at(&view, offset);
    uint64_t value = word ? __atomic_load_n(word, __ATOMIC_ACQUIRE) : 0;
    PyBuffer_Release(&view);
    if (!word)
        return NULL;
    return PyLong_FromUnsignedLongLong(value);
}

/* still_valid(buf, offset, generation) -> bool: every pixel read before this call came from
 * that generation's write (an acquire fence orders the pixel loads before the re-check). */
static PyObject *still_valid(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset;
    unsigned long long expected;
    if (!PyArg_ParseTuple(args, "y*nK", &view, &offset, &expected))
        return NULL;
    uint64_t *word = word_at(&view, offset);
    int valid = 0;
    if (word) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        valid = __atomic_load_n(word, __ATOMIC_RELAXED) == (uint64_t)expected;
    }
    PyBuffer_Release(&view);
    if (!word)
        return NULL;
    return PyBool_FromLong(valid);
}

static PyMethodDef methods[] = {
    {"begin_write", begin_write, METH_VARARGS, "Make the generation odd, then fence (release)."},
    {"end_write", end_write, METH_VARARGS, "Store the next even generation with release order."},
    {"store_release", store_release, METH_VARARGS, "Store a uint64 with release order."},
    {"load_acquire", load_acquire, METH_VARARGS, "Load a uint64 with acquire order."},
    {"still_valid", still_valid, METH_VARARGS, "Acquire fence, then compare the uint64 with a value."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fence", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fence(void) { return PyModule_Create(&module); }
