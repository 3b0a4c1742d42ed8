/* fcnquant._native: the compiled one-pass kernels (observer histograms + min/max, compare's drift sums).
 *
 * The numpy code in fcnquant.observers and fcnquant.compare.drift.metrics is the tested reference; these loops
 * compute the same integer counts and the same min/max bit for bit, and the same drift sums to rounding (the
 * order of the float64 additions differs). Every function takes C-contiguous buffers (numpy arrays), checks
 * their element types and lengths, and releases the GIL while it loops, so several threads observe at once.
 *
 * The observer loops read each value once: its bit pattern for the histogram bin (u >> shift) and the same bits
 * as float32 for the min/max. NaN compares false, so it never becomes an extreme; NaN and +-Inf land in the
 * histogram's non-finite bins, which the caller checks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
/* At -O3 (Python's default flags) GCC splits the observer loop into a histogram loop and a min/max loop, which
 * then read the tensor from memory twice: 0.99-1.02 ns per value against 0.60-0.73 in one loop. */
#pragma GCC optimize("no-tree-loop-distribution")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
/* An x86-64-v3 (AVX2/BMI2) copy chosen at load time where the CPU has it: shifts by a register without the CL
 * dance and folded increments, 0.60-0.65 ns per value against 0.71-0.75 for the baseline copy. */
#define OBSERVER_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OBSERVER_CLONES
#endif

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Two interleaved int32 lanes per bin: value i counts in lanes[2 * (u[i] >> shift) + i % 2], so neighbouring
 * values in the same bin (ReLU zeros) never wait on each other's store. */
OBSERVER_CLONES
static void observe_lanes_loop(const uint32_t *u, Py_ssize_t n, int32_t *lanes, unsigned shift, float *lo_out,
                               float *hi_out) {
    float lo0 = __builtin_inff(), hi0 = -__builtin_inff(), lo1 = lo0, hi1 = hi0;
    Py_ssize_t m = n & ~(Py_ssize_t)3, i;
    for (i = 0; i < m; i += 4) {
        uint32_t a = u[i], b = u[i + 1], c = u[i + 2], d = u[i + 3];
        lanes[(a >> shift) << 1] += 1;
        lanes[((b >> shift) << 1) | 1] += 1;
        lanes[(c >> shift) << 1] += 1;
        lanes[((d >> shift) << 1) | 1] += 1;
        float v = bits_to_float(a), w = bits_to_float(b), x = bits_to_float(c), y = bits_to_float(d);
        lo0 = MIN(v, lo0); hi0 = MAX(v, hi0); lo1 = MIN(w, lo1); hi1 = MAX(w, hi1);
        lo0 = MIN(x, lo0); hi0 = MAX(x, hi0); lo1 = MIN(y, lo1); hi1 = MAX(y, hi1);
    }
    for (; i < n; i++) {
        lanes[((u[i] >> shift) << 1) | (i & 1)] += 1;
        float v = bits_to_float(u[i]);
        lo0 = MIN(v, lo0); hi0 = MAX(v, hi0);
    }
    *lo_out = MIN(lo0, lo1);
    *hi_out = MAX(hi0, hi1);
}

OBSERVER_CLONES
static void observe_loop(const uint32_t *u, Py_ssize_t n, int64_t *counts, unsigned shift, float *lo_out,
                         float *hi_out) {
    float lo = __builtin_inff(), hi = -__builtin_inff();
    for (Py_ssize_t i = 0; i < n; i++) {
        counts[u[i] >> shift] += 1;
        float v = bits_to_float(u[i]);
        lo = MIN(v, lo); hi = MAX(v, hi);
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* ---- buffer checks ---- */

/* kind: 'f' float, 'i' signed integer, 'u' unsigned integer; 0 when the format is none of those */
static char format_kind(const char *format) {
    if (format == NULL) return 'u';  /* PyBUF_FORMAT was requested; NULL means unsigned bytes */
    if (*format == '<' || *format == '=' || *format == '@') format++;
    if (format[0] == '\0' || format[1] != '\0') return 0;
    if (strchr("efd", format[0])) return 'f';
    if (strchr("bhilq", format[0])) return 'i';
    if (strchr("BHILQ", format[0])) return 'u';
    return 0;
}

/* Gets a C-contiguous buffer of `kind` elements of `itemsize` bytes (kind 'I': any integer kind); sets an
 * exception and returns -1 otherwise. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, char kind, Py_ssize_t itemsize,
                      const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    char k = format_kind(view->format);
    int kind_ok = kind == 'I' ? (k == 'i' || k == 'u') : k == kind;
    if (!kind_ok || (itemsize && view->itemsize != itemsize)) {
        PyErr_Format(PyExc_TypeError, "%s: unexpected element type '%s' (%zd bytes)", what,
                     view->format ? view->format : "B", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *min_max(float lo, float hi) {
    return Py_BuildValue("(dd)", (double)lo, (double)hi);
}

static int check_shift(unsigned long shift, Py_ssize_t slots, Py_ssize_t per_bin, const char *what) {
    if (shift < 1 || shift > 31) {
        PyErr_Format(PyExc_ValueError, "%s: shift must be in 1..31, got %lu", what, shift);
        return -1;
    }
    if (slots < ((Py_ssize_t)1 << (32 - shift)) * per_bin) {
        PyErr_Format(PyExc_ValueError, "%s: %zd counts for %zd bins", what, slots,
                     ((Py_ssize_t)1 << (32 - shift)) * per_bin);
        return -1;
    }
    return 0;
}

/* ---- observer kernels ---- */

/* observe_lanes(values, lanes, shift) with int32 lanes (lanes = 1), observe(values, counts, shift) with int64
 * counts (lanes = 0): the same arguments, checks and result */
static PyObject *observe_call(PyObject *args, int lanes, const char *what) {
    PyObject *values_obj, *counts_obj;
    unsigned long shift;
    if (!PyArg_ParseTuple(args, "OOk", &values_obj, &counts_obj, &shift)) return NULL;
    Py_ssize_t count_size = lanes ? 4 : 8;
    Py_buffer values, counts;
    if (get_buffer(values_obj, &values, 0, 'f', 4, what) < 0) return NULL;
    if (get_buffer(counts_obj, &counts, 1, 'i', count_size, what) < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    float lo = 0, hi = 0;
    int ok = check_shift(shift, counts.len / count_size, lanes ? 2 : 1, what) == 0;
    if (ok) {
        const uint32_t *u = (const uint32_t *)values.buf;
        Py_ssize_t n = values.len / 4;
        Py_BEGIN_ALLOW_THREADS
        if (lanes)
            observe_lanes_loop(u, n, (int32_t *)counts.buf, (unsigned)shift, &lo, &hi);
        else
            observe_loop(u, n, (int64_t *)counts.buf, (unsigned)shift, &lo, &hi);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&counts);
    PyBuffer_Release(&values);
    return ok ? min_max(lo, hi) : NULL;
}

static PyObject *py_observe_lanes(PyObject *self, PyObject *args) {
    return observe_call(args, 1, "observe_lanes");
}

static PyObject *py_observe(PyObject *self, PyObject *args) {
    return observe_call(args, 0, "observe");
}

static PyObject *py_fold_lanes(PyObject *self, PyObject *args) {
    PyObject *lanes_obj, *counts_obj;
    if (!PyArg_ParseTuple(args, "OO:fold_lanes", &lanes_obj, &counts_obj)) return NULL;
    Py_buffer lanes, counts;
    if (get_buffer(lanes_obj, &lanes, 0, 'i', 4, "fold_lanes lanes") < 0) return NULL;
    if (get_buffer(counts_obj, &counts, 1, 'i', 8, "fold_lanes counts") < 0) {
        PyBuffer_Release(&lanes);
        return NULL;
    }
    Py_ssize_t bins = counts.len / 8;
    int ok = lanes.len / 4 == 2 * bins;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "fold_lanes: %zd lanes for %zd bins", lanes.len / 4, bins);
    } else {
        const int32_t *l = (const int32_t *)lanes.buf;
        int64_t *c = (int64_t *)counts.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < bins; k++) {
            int32_t a = l[2 * k], b = l[2 * k + 1];
            if (a | b) c[k] += (int64_t)a + (int64_t)b;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&counts);
    PyBuffer_Release(&lanes);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* ---- drift sums ---- */

/* Four lanes of partial sums (value i in lane i % 4), added pairwise at the end: the lanes are independent, so
 * they run as one vector (GCC/clang vector extensions; a scalar loop elsewhere, with the same lanes), and the
 * result does not depend on which runs (no contraction into fused multiply-adds either: every machine gives the
 * same bits). 10 M float32 pairs, 2-core AMD EPYC: 0.56-0.70 ns per value as vectors, 1.55 as scalars (the 20
 * accumulators do not fit the registers); numba's reassociated loop took 1.37-1.61. */
#define DRIFT_TAIL(LOAD_B)                                                                             \
    for (; i < n; i++) {                                                                               \
        int j = (int)(i & 3);                                                                          \
        double a = (double)r[i], b = (double)(LOAD_B(t[i])), e = b - a;                                \
        double ae = fabs(e);                                                                           \
        se[j] += e * e; sr[j] += a * a; st[j] += b * b; sd[j] += a * b;                                \
        mx[j] = ae > mx[j] ? ae : mx[j];                                                               \
    }                                                                                                  \
    out[0] = (se[0] + se[1]) + (se[2] + se[3]);                                                        \
    out[1] = (sr[0] + sr[1]) + (sr[2] + sr[3]);                                                        \
    out[2] = (st[0] + st[1]) + (st[2] + st[3]);                                                        \
    out[3] = (sd[0] + sd[1]) + (sd[2] + sd[3]);                                                        \
    out[4] = MAX(MAX(mx[0], mx[1]), MAX(mx[2], mx[3]));

#if defined(__GNUC__) && ((defined(__clang__) && __clang_major__ >= 10) || (!defined(__clang__) && __GNUC__ >= 9))
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* LOAD_V(ptr) gives four test values as float32 (v4f); LOAD_B(x) one, for the tail */
#define DRIFT_LOOP(NAME, T, LOAD_V, LOAD_B)                                                            \
    OBSERVER_CLONES                                                                                    \
    static void NAME(const float *r, const T *t, Py_ssize_t n, int32_t zero_point, float scale,        \
                     double out[5]) {                                                                  \
        v4d vse = {0}, vsr = {0}, vst = {0}, vsd = {0}, vmx = {0};                                     \
        const v4l sign = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};                                 \
        Py_ssize_t m = n & ~(Py_ssize_t)3, i;                                                          \
        (void)zero_point; (void)scale;                                                                 \
        for (i = 0; i < m; i += 4) {                                                                   \
            v4f rf;                                                                                    \
            memcpy(&rf, r + i, sizeof rf);                                                             \
            v4d a = __builtin_convertvector(rf, v4d), b = __builtin_convertvector(LOAD_V(t + i), v4d);  \
            v4d e = b - a;                                                                             \
            v4d ae = (v4d)((v4l)e & sign);                                                             \
            vse += e * e; vsr += a * a; vst += b * b; vsd += a * b;                                    \
            v4l gt = ae > vmx;                                                                         \
            vmx = (v4d)(((v4l)ae & gt) | ((v4l)vmx & ~gt));                                            \
        }                                                                                              \
        double se[4], sr[4], st[4], sd[4], mx[4];                                                      \
        memcpy(se, &vse, sizeof se); memcpy(sr, &vsr, sizeof sr); memcpy(st, &vst, sizeof st);         \
        memcpy(sd, &vsd, sizeof sd); memcpy(mx, &vmx, sizeof mx);                                      \
        DRIFT_TAIL(LOAD_B)                                                                             \
    }

static inline v4f load_float4(const float *p) {
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
#define LOAD_CODES4(T)                                                                                 \
    static inline v4f load_##T##4(const T *p, int32_t zero_point, float scale) {                       \
        typedef T vT __attribute__((vector_size(4 * sizeof(T))));                                      \
        vT c;                                                                                          \
        memcpy(&c, p, sizeof c);                                                                       \
        v4i z = {zero_point, zero_point, zero_point, zero_point};                                      \
        v4f k = {scale, scale, scale, scale};                                                          \
        return __builtin_convertvector(__builtin_convertvector(c, v4i) - z, v4f) * k;                  \
    }
LOAD_CODES4(int8_t)
LOAD_CODES4(uint8_t)
LOAD_CODES4(int16_t)
LOAD_CODES4(uint16_t)
LOAD_CODES4(int32_t)
#define VEC_FLOAT(p) load_float4(p)
#define VEC_CODES(T) VEC_CODES_##T
#define VEC_CODES_int8_t(p) load_int8_t4(p, zero_point, scale)
#define VEC_CODES_uint8_t(p) load_uint8_t4(p, zero_point, scale)
#define VEC_CODES_int16_t(p) load_int16_t4(p, zero_point, scale)
#define VEC_CODES_uint16_t(p) load_uint16_t4(p, zero_point, scale)
#define VEC_CODES_int32_t(p) load_int32_t4(p, zero_point, scale)
#else
#define DRIFT_LOOP(NAME, T, LOAD_V, LOAD_B)                                                            \
    static void NAME(const float *r, const T *t, Py_ssize_t n, int32_t zero_point, float scale,        \
                     double out[5]) {                                                                  \
        double se[4] = {0}, sr[4] = {0}, st[4] = {0}, sd[4] = {0}, mx[4] = {0};                        \
        Py_ssize_t i = 0;                                                                              \
        (void)zero_point; (void)scale;                                                                 \
        DRIFT_TAIL(LOAD_B)                                                                             \
    }
#define VEC_FLOAT(p) 0
#define VEC_CODES(T) 0
#endif

/* The test side as a DequantizeLinear's integer input: float32(int32(code) - zero_point) * scale, in float32 as
 * DequantizeLinear computes it, then widened exactly to float64. */
#define AS_FLOAT(x) (x)
#define DEQUANTIZE(c) ((float)((int32_t)(c) - zero_point) * scale)
DRIFT_LOOP(drift_float, float, VEC_FLOAT, AS_FLOAT)
DRIFT_LOOP(drift_int8, int8_t, VEC_CODES(int8_t), DEQUANTIZE)
DRIFT_LOOP(drift_uint8, uint8_t, VEC_CODES(uint8_t), DEQUANTIZE)
DRIFT_LOOP(drift_int16, int16_t, VEC_CODES(int16_t), DEQUANTIZE)
DRIFT_LOOP(drift_uint16, uint16_t, VEC_CODES(uint16_t), DEQUANTIZE)
DRIFT_LOOP(drift_int32, int32_t, VEC_CODES(int32_t), DEQUANTIZE)

static PyObject *sums_result(const double s[5]) {
    return Py_BuildValue("(ddddd)", s[0], s[1], s[2], s[3], s[4]);
}

static PyObject *py_drift_sums(PyObject *self, PyObject *args) {
    PyObject *ref_obj, *test_obj;
    if (!PyArg_ParseTuple(args, "OO:drift_sums", &ref_obj, &test_obj)) return NULL;
    Py_buffer ref, test;
    if (get_buffer(ref_obj, &ref, 0, 'f', 4, "drift_sums reference") < 0) return NULL;
    if (get_buffer(test_obj, &test, 0, 'f', 4, "drift_sums test") < 0) {
        PyBuffer_Release(&ref);
        return NULL;
    }
    double s[5] = {0};
    int ok = ref.len == test.len;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "drift_sums: %zd reference values, %zd test values", ref.len / 4,
                     test.len / 4);
    } else {
        Py_BEGIN_ALLOW_THREADS
        drift_float((const float *)ref.buf, (const float *)test.buf, ref.len / 4, 0, 0.0f, s);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&test);
    PyBuffer_Release(&ref);
    return ok ? sums_result(s) : NULL;
}

static PyObject *py_drift_sums_codes(PyObject *self, PyObject *args) {
    PyObject *ref_obj, *codes_obj;
    int zero_point;
    float scale;
    if (!PyArg_ParseTuple(args, "OOif:drift_sums_codes", &ref_obj, &codes_obj, &zero_point, &scale)) return NULL;
    Py_buffer ref, codes;
    if (get_buffer(ref_obj, &ref, 0, 'f', 4, "drift_sums_codes reference") < 0) return NULL;
    if (get_buffer(codes_obj, &codes, 0, 'I', 0, "drift_sums_codes codes") < 0) {
        PyBuffer_Release(&ref);
        return NULL;
    }
    double s[5] = {0};
    char kind = format_kind(codes.format);
    Py_ssize_t n = ref.len / 4, size = codes.itemsize;
    int ok = codes.len / size == n && (size == 1 || size == 2 || (size == 4 && kind == 'i'));
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "drift_sums_codes: %zd reference values, %zd codes of %zd bytes", n,
                     codes.len / size, size);
    } else {
        const float *r = (const float *)ref.buf;
        const void *c = codes.buf;
        Py_BEGIN_ALLOW_THREADS
        if (size == 1 && kind == 'i') drift_int8(r, (const int8_t *)c, n, zero_point, scale, s);
        else if (size == 1) drift_uint8(r, (const uint8_t *)c, n, zero_point, scale, s);
        else if (size == 2 && kind == 'i') drift_int16(r, (const int16_t *)c, n, zero_point, scale, s);
        else if (size == 2) drift_uint16(r, (const uint16_t *)c, n, zero_point, scale, s);
        else drift_int32(r, (const int32_t *)c, n, zero_point, scale, s);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&ref);
    return ok ? sums_result(s) : NULL;
}

static PyMethodDef methods[] = {
    {"observe_lanes", py_observe_lanes, METH_VARARGS,
     "observe_lanes(values, lanes, shift) -> (min, max): adds each float32 value's bin (bits >> shift) to two "
     "interleaved int32 lanes per bin (lanes[2 * bin + i % 2])."},
    {"observe", py_observe, METH_VARARGS,
     "observe(values, counts, shift) -> (min, max): adds each float32 value's bin (bits >> shift) to the int64 "
     "counts."},
    {"fold_lanes", py_fold_lanes, METH_VARARGS,
     "fold_lanes(lanes, counts): counts[k] += lanes[2k] + lanes[2k + 1] (int32 lanes, int64 counts)."},
    {"drift_sums", py_drift_sums, METH_VARARGS,
     "drift_sums(ref, test) -> (sum e^2, sum r^2, sum q^2, sum r q, max |e|) of two float32 arrays, float64."},
    {"drift_sums_codes", py_drift_sums_codes, METH_VARARGS,
     "drift_sums_codes(ref, codes, zero_point, scale) -> the drift sums against dequantized integer codes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fcnquant._native",
    "The compiled one-pass kernels: observer histograms with min/max, and compare's drift sums.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
