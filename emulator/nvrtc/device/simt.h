// ingot emulator: the SIMT runtime compiled into every emulated module (the stand-in "CUBIN").
//
// A launch runs the grid block after block, in a seeded random order, on the calling host
// thread. The threads of a block are cooperative fibers with their own stacks: a fiber runs
// until it reaches a barrier (__syncthreads, or a warp collective such as __shfl_xor_sync or
// mma.sync), then the next one runs. When every live thread of the block (or of the warp) has
// arrived, the barrier opens. Between barriers the fibers run in an order shuffled by the seed,
// so a missing __syncthreads lets some thread read shared memory before another has written it,
// and the result comes out wrong instead of right by luck.
//
// Faults end the launch and come back to the driver stand-in as a FaultKind with a message:
// a segmentation fault (device allocations have guard pages: out of bounds), __trap(), a
// misaligned or out-of-range access found by the compiler's checks (-fsanitize=alignment,bounds
// call the __ubsan_* handlers defined here), a warp collective reached by only some lanes,
// and a block whose barriers can never open (deadlock).
//
// Everything here is private to one module: the driver stand-in reaches it through the four
// extern "C" functions at the end (the module ABI, mirrored in emulator/common/src/abi.rs).
// Launches are serialised by the driver stand-in, so plain globals hold the current launch.

#pragma once

#if !defined(__x86_64__)
#error "the ingot emulator's fibers switch stacks with x86-64 code"
#endif

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <utility>

#define INGOT_EMU_ABI_VERSION 2u

// ---- the module ABI (emulator/common/src/abi.rs has the same layouts) ---------------------

extern "C" {
struct ingot_emu_kernel_info {
    const char* name;
    uint32_t param_count;
    const uint32_t* param_sizes;
    const uint32_t* param_aligns;
    uint32_t max_threads;  // from __launch_bounds__, 0 when none was given
};

struct ingot_emu_launch_spec {
    uint32_t grid[3];
    uint32_t block[3];
    void** params;
    uint64_t seed;
    // The driver's fiber stacks, shared by every module (launches never overlap): block.x *
    // block.y * block.z of them, each stack_bytes long with its lowest page unmapped, at
    // stacks + i * stack_stride.
    char* stacks;
    uint64_t stack_stride;
    // Filled on return when the launch faulted.
    uint32_t fault_block[3];
    uint32_t fault_thread[3];
    uint64_t fault_address;
    char message[512];
};
}

// What ended a launch; the driver stand-in maps each to the CUresult a GPU would give.
enum ingot_emu_fault : int {
    INGOT_EMU_OK = 0,
    INGOT_EMU_ILLEGAL_ADDRESS = 1,  // a fault on a guard page or any unmapped address
    INGOT_EMU_MISALIGNED = 2,       // -fsanitize=alignment
    INGOT_EMU_OUT_OF_RANGE = 3,     // -fsanitize=bounds: an array index past its extent
    INGOT_EMU_TRAP = 4,             // __trap()
    INGOT_EMU_DIVERGENT = 5,        // a warp collective not reached by every lane alike
    INGOT_EMU_DEADLOCK = 6,         // barriers that can never open
    INGOT_EMU_STACK = 7,            // no fiber stacks were given
};

namespace ingot_emu {

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum class State : unsigned char { ready, block_barrier, warp_barrier, exited };

// What a lane is doing at a warp barrier: every lane of the warp must do the same.
enum Collective : unsigned { shfl = 1, mma = 2, syncwarp = 3 };

struct Thread {
    void* sp;  // saved stack pointer while switched out
    uint3 idx;
    unsigned lane, warp;
    State state;
    unsigned collectives;  // warp collectives done so far (picks the exchange buffer)
};

// Per-warp exchange: lane l writes slot[l] of buffer (collectives & 1), the warp barrier opens,
// every lane reads what it needs. Two buffers, so one barrier per collective is enough: a lane
// can only write a buffer again after the next barrier, which every lane reaches after reading.
constexpr int kExchangeWords = 6;
struct Warp {
    unsigned lanes;    // threads of the block in this warp (32 but for a short last warp)
    unsigned arrived;  // lanes waiting at the warp barrier
    unsigned exited;
    unsigned kind, count;  // the collective the first lane to arrive waits on, and its number
    uint32_t xchg[2][32][kExchangeWords];
};

constexpr unsigned kMaxThreads = 1024;

struct Block {
    uint3 idx;
    dim3 dim, grid;
    unsigned threads;
    unsigned live;        // threads that have not exited
    unsigned at_barrier;  // threads waiting at __syncthreads
    Thread th[kMaxThreads];
    Warp warps[kMaxThreads / 32];
};

inline Thread* cur;         // the running fiber (valid while a block runs)
inline void* sched_sp;      // the scheduler's saved stack pointer
inline Block blk;           // the running block
inline void (*entry)(void**);
inline void** entry_params;
inline sigjmp_buf fault_jump;
inline ingot_emu_launch_spec* spec;
inline int fault_kind;
inline volatile bool in_launch;  // set while this module runs a launch
inline pthread_t launch_thread;  // on this host thread

// x86-64 System V stack switch: saves the callee-saved registers on the current stack, stores
// the stack pointer in *save and resumes the stack `load`. MXCSR and the x87 control word are
// callee-saved too, but no kernel changes them, and leaving them out halves the cost.
extern "C" void ingot_emu_switch(void** save, void* load) __attribute__((visibility("hidden")));
asm(R"(
    .text
    .p2align 4
    .hidden ingot_emu_switch
    .type ingot_emu_switch, @function
ingot_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ingot_emu_switch, .-ingot_emu_switch
)");

// ---- faults ---------------------------------------------------------------------------------

// Records the fault (kind, where, message) and leaves the launch: back to ingot_emu_launch's
// sigsetjmp, from a fiber, a signal handler or the scheduler alike.
[[noreturn]] inline void fault(int kind, uint64_t address, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
[[noreturn]] inline void fault(int kind, uint64_t address, const char* fmt, ...) {
    fault_kind = kind;
    spec->fault_address = address;
    spec->fault_block[0] = blk.idx.x;
    spec->fault_block[1] = blk.idx.y;
    spec->fault_block[2] = blk.idx.z;
    const Thread* t = cur;
    spec->fault_thread[0] = t ? t->idx.x : 0;
    spec->fault_thread[1] = t ? t->idx.y : 0;
    spec->fault_thread[2] = t ? t->idx.z : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(spec->message, sizeof spec->message, fmt, ap);
    va_end(ap);
    siglongjmp(fault_jump, 1);
}

inline struct sigaction old_segv, old_bus;

// Faults of the kernel (guard pages, wild pointers, a fiber's stack overflow) end the launch;
// a fault on another host thread goes to the handler that was there before.
inline void on_signal(int sig, siginfo_t* info, void* uctx) {
    if (in_launch && pthread_equal(pthread_self(), launch_thread)) {
        fault(INGOT_EMU_ILLEGAL_ADDRESS, (uint64_t)(uintptr_t)info->si_addr,
              "illegal address %p (signal %d): an access outside every device allocation",
              info->si_addr, sig);
    }
    struct sigaction* old = sig == SIGSEGV ? &old_segv : &old_bus;
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, info, uctx);
    } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
        old->sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // the faulting access runs again and takes the default action
    }
}

// ---- fibers and the scheduler ---------------------------------------------------------------

inline uint64_t splitmix(uint64_t* s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The lanes of the warp round being run (see run_warp), and the next one to run.
inline Thread* round_lanes[32];
inline unsigned round_len, round_next;

// Leaves the running fiber (it has blocked or exited): on to the next lane of the round, or
// back to the scheduler when the round is done. Returns when the fiber is resumed.
inline void leave(Thread* self) {
    while (round_next < round_len) {
        Thread* next = round_lanes[round_next++];
        if (next->state == State::ready) {
            cur = next;
            ingot_emu_switch(&self->sp, next->sp);
            return;
        }
    }
    ingot_emu_switch(&self->sp, sched_sp);
}

// Blocks the running fiber at __syncthreads.
inline void block_barrier() {
    Thread* t = cur;
    t->state = State::block_barrier;
    blk.at_barrier++;
    leave(t);
}

[[noreturn]] inline void fiber_main() {
    entry(entry_params);
    Thread* t = cur;
    t->state = State::exited;
    blk.live--;
    blk.warps[t->warp].exited++;
    leave(t);
    __builtin_unreachable();
}

// A fresh frame for ingot_emu_switch to "return" into fiber_main on thread i's stack.
inline void* fresh_stack(unsigned i) {
    char* top = spec->stacks + (size_t)(i + 1) * spec->stack_stride;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top) - 8;
    for (int r = 0; r < 6; ++r) sp[r] = 0;  // r15 r14 r13 r12 rbx rbp
    sp[6] = reinterpret_cast<uint64_t>(&fiber_main);
    sp[7] = 0;  // fiber_main's return address: it never returns
    return sp;
}

extern "C" char __start_ingot_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_ingot_shared[] __attribute__((weak, visibility("hidden")));

// Opens the barrier of warp w if all its lanes wait at it (they waited on the same collective:
// each lane checked that as it arrived). Exited lanes cannot take part in a full-mask
// collective: that is a fault, as on a GPU it hangs or reads garbage.
inline bool open_warp(unsigned w) {
    Warp& wp = blk.warps[w];
    if (wp.arrived == 0) return false;
    if (wp.exited > 0 && wp.arrived + wp.exited == wp.lanes) {
        cur = &blk.th[w * 32];
        fault(INGOT_EMU_DIVERGENT, 0,
              "warp %u: a full-mask warp collective with %u of its %u lanes exited", w, wp.exited,
              wp.lanes);
    }
    if (wp.arrived != wp.lanes) return false;
    Thread* lanes = &blk.th[w * 32];
    for (unsigned l = 0; l < wp.lanes; ++l) lanes[l].state = State::ready;
    wp.arrived = 0;
    return true;
}

// Runs warp w until none of its lanes can go on: each round runs every ready lane to its next
// barrier, in an order drawn from the seed (lane ^ m, rotated by r: one draw per round, still
// 1024 orders), each lane handing over to the next; when the whole warp waits on a warp
// collective, that opens and it goes again. Returns whether any lane ran.
inline bool run_warp(unsigned w, uint64_t* seed) {
    Thread* lanes = &blk.th[w * 32];
    const unsigned n = blk.warps[w].lanes;
    bool ran = false;
    for (;;) {
        const uint64_t r = splitmix(seed);
        const unsigned m = (unsigned)r & 31, rot = (unsigned)(r >> 8) & 31;
        round_len = 0;
        for (unsigned k = 0; k < 32; ++k) {
            const unsigned l = ((k ^ m) + rot) & 31;
            if (l < n && lanes[l].state == State::ready) round_lanes[round_len++] = &lanes[l];
        }
        if (round_len == 0) return ran;
        ran = true;
        round_next = 1;
        cur = round_lanes[0];
        ingot_emu_switch(&sched_sp, cur->sp);
        cur = nullptr;
        if (!open_warp(w)) return ran;
    }
}

// Opens __syncthreads when every thread that has not exited waits on it.
inline bool open_block_barrier() {
    if (blk.at_barrier == 0 || blk.at_barrier != blk.live) return false;
    for (unsigned i = 0; i < blk.threads; ++i) {
        if (blk.th[i].state == State::block_barrier) blk.th[i].state = State::ready;
    }
    blk.at_barrier = 0;
    return true;
}

// Runs one block to completion (or to a fault, which leaves through fault()). Between block
// barriers the warps run one after another in an order drawn from the seed, each until it
// waits at __syncthreads or exits, so a warp that reads what another warp writes without a
// barrier in between finds it unwritten (NaN) in some orders.
inline void run_block(uint64_t seed) {
    if (__start_ingot_shared != __stop_ingot_shared) {
        // Uninitialised shared memory reads as NaN (f32 and bf16 alike), as device memory does.
        memset(__start_ingot_shared, 0xff, __stop_ingot_shared - __start_ingot_shared);
    }
    const unsigned n = blk.threads;
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = blk.th[i];
        t.idx = {i % blk.dim.x, (i / blk.dim.x) % blk.dim.y, i / (blk.dim.x * blk.dim.y)};
        t.lane = i & 31;
        t.warp = i >> 5;
        t.state = State::ready;
        t.collectives = 0;
        t.sp = fresh_stack(i);
    }
    const unsigned warps = (n + 31) / 32;
    for (unsigned w = 0; w < warps; ++w) {
        Warp& wp = blk.warps[w];
        wp.lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        wp.arrived = wp.exited = 0;
    }
    blk.live = n;
    blk.at_barrier = 0;
    unsigned order[kMaxThreads / 32];
    for (;;) {
        for (unsigned w = 0; w < warps; ++w) order[w] = w;
        for (unsigned i = warps - 1; i > 0; --i) {  // Fisher-Yates, seeded
            const unsigned j = (unsigned)(splitmix(&seed) % (i + 1));
            const unsigned tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        bool ran = false;
        for (unsigned k = 0; k < warps; ++k) ran |= run_warp(order[k], &seed);
        if (blk.live == 0) return;
        if (open_block_barrier() || ran) continue;
        fault(INGOT_EMU_DEADLOCK, 0,
              "deadlock: %u live threads wait at barriers that cannot open (a __syncthreads not "
              "reached by every thread, or lanes of one warp at different barriers)",
              blk.live);
    }
}

// ---- warp collectives -----------------------------------------------------------------------

// This lane's slot of the exchange buffer of its next collective.
inline uint32_t* exchange_slot() {
    return blk.warps[cur->warp].xchg[cur->collectives & 1][cur->lane];
}

// Waits until every lane of the warp has reached the same collective, then returns the buffer
// the lanes wrote ([lane][word]).
inline uint32_t (*warp_exchange(unsigned kind))[kExchangeWords] {
    Thread* t = cur;
    Warp& w = blk.warps[t->warp];
    if (w.arrived == 0) {
        w.kind = kind;
        w.count = t->collectives;
    } else if (w.kind != kind || w.count != t->collectives) {
        fault(INGOT_EMU_DIVERGENT, 0,
              "warp %u: lanes at different warp collectives (kind %u, number %u, and kind %u, "
              "number %u)",
              t->warp, w.kind, w.count, kind, t->collectives);
    }
    w.arrived++;
    t->state = State::warp_barrier;
    leave(t);
    uint32_t (*buf)[kExchangeWords] = blk.warps[t->warp].xchg[t->collectives & 1];
    t->collectives++;
    return buf;
}

inline void check_full_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu || blk.warps[cur->warp].lanes != 32) {
        fault(INGOT_EMU_DIVERGENT, 0,
              "%s with mask 0x%08x in a warp of %u threads: the emulator models full warps "
              "with the full mask only",
              what, mask, blk.warps[cur->warp].lanes);
    }
}

template <typename T>
inline T shuffle(unsigned mask, T v, unsigned src_of_lane(unsigned lane, int arg), int arg,
                 const char* what) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of 1 to 8 bytes");
    check_full_mask(mask, what);
    uint32_t* slot = exchange_slot();
    memcpy(slot, &v, sizeof(T));
    const unsigned lane = cur->lane;
    uint32_t (*buf)[kExchangeWords] = warp_exchange(shfl);
    T out;
    memcpy(&out, buf[src_of_lane(lane, arg) & 31], sizeof(T));
    return out;
}

inline unsigned src_xor(unsigned lane, int m) { return lane ^ (unsigned)m; }
inline unsigned src_idx(unsigned, int l) { return (unsigned)l; }
inline unsigned src_down(unsigned lane, int d) { return lane + d < 32 ? lane + d : lane; }
inline unsigned src_up(unsigned lane, int d) { return lane >= (unsigned)d ? lane - d : lane; }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, by the PTX ISA's fragment layout
// (gid = lane / 4, tig = lane % 4; each 32-bit register holds two bf16, the lower column low):
//   A 16x16: a0 = A[gid][2tig..], a1 = A[gid+8][2tig..], a2 = A[gid][2tig+8..], a3 = A[gid+8][2tig+8..]
//   B 16x8:  b0 = B[2tig..][gid], b1 = B[2tig+8..][gid]
//   C, D 16x8: c0,c1 = [gid][2tig..], c2,c3 = [gid+8][2tig..]
// Every lane deposits its A and B registers; each then computes its own four outputs. The
// bf16 products are exact in f32; the 16 of each output are added in k order to c.
inline float bf16_bits(uint32_t reg, unsigned half) {
    const uint32_t b = half ? reg >> 16 : reg & 0xffffu;
    float f;
    const uint32_t u = b << 16;
    memcpy(&f, &u, 4);
    return f;
}

inline float mma_a(uint32_t (*buf)[kExchangeWords], unsigned row, unsigned k) {
    const unsigned lane = (row & 7) * 4 + (k & 7) / 2;
    const unsigned reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return bf16_bits(buf[lane][reg], k & 1);
}

inline float mma_b(uint32_t (*buf)[kExchangeWords], unsigned k, unsigned col) {
    const unsigned lane = col * 4 + (k & 7) / 2;
    return bf16_bits(buf[lane][k >= 8 ? 5 : 4], k & 1);
}

inline void mma_m16n8k16_bf16_f32(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    check_full_mask(0xffffffffu, "mma.sync.m16n8k16");
    uint32_t* slot = exchange_slot();
    for (int r = 0; r < 4; ++r) slot[r] = a[r];
    slot[4] = b0;
    slot[5] = b1;
    const unsigned gid = cur->lane >> 2, tig = cur->lane & 3;
    uint32_t (*buf)[kExchangeWords] = warp_exchange(mma);
    for (int e = 0; e < 4; ++e) {
        const unsigned row = gid + (e >= 2 ? 8 : 0), col = tig * 2 + (e & 1);
        float acc = 0.0f;
        for (unsigned k = 0; k < 16; ++k) acc += mma_a(buf, row, k) * mma_b(buf, k, col);
        c[e] += acc;
    }
}

// ---- the kernel table -----------------------------------------------------------------------

constexpr unsigned kMaxKernels = 256;
inline ingot_emu_kernel_info kernels[kMaxKernels];
inline void (*invokers[kMaxKernels])(void**);
inline unsigned kernel_count;

template <auto F>
struct KernelOf;

// The parameter list of a kernel, deduced from its type: the emulator needs no parser for it.
template <typename... A, void (*F)(A...)>
struct KernelOf<F> {
    static constexpr uint32_t count = sizeof...(A);
    static constexpr uint32_t sizes[] = {(uint32_t)sizeof(A)..., 0};
    static constexpr uint32_t aligns[] = {(uint32_t)alignof(A)..., 0};
    template <size_t... I>
    static void call(void** p, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<A>*>(p[I])...);
    }
    static void invoke(void** p) { call(p, std::index_sequence_for<A...>{}); }
};

template <auto F>
inline int add_kernel(const char* name, uint32_t max_threads) {
    using K = KernelOf<F>;
    if (kernel_count >= kMaxKernels) return -1;
    kernels[kernel_count] = {name, K::count, K::sizes, K::aligns, max_threads};
    invokers[kernel_count] = &K::invoke;
    return (int)kernel_count++;
}

}  // namespace ingot_emu

#define INGOT_EMU_KERNEL(name, max_threads)                                                    \
    static const int ingot_emu_registered_##name =                                             \
        ::ingot_emu::add_kernel<&name>(#name, max_threads);

// ---- -fsanitize=alignment,bounds (trapping handlers, no libubsan) -------------------------

namespace ingot_emu {
struct SourceLocation {
    const char* file;
    uint32_t line, column;
};
struct TypeMismatchData {
    SourceLocation loc;
    const void* type;
    unsigned char log_alignment;
    unsigned char kind;
};
}  // namespace ingot_emu

extern "C" {
__attribute__((visibility("hidden"), noreturn)) inline void ingot_emu_type_mismatch(
    ingot_emu::TypeMismatchData* d, uintptr_t ptr) {
    using namespace ingot_emu;
    if (ptr == 0) {
        fault(INGOT_EMU_ILLEGAL_ADDRESS, 0, "null pointer access at %s:%u", d->loc.file,
              d->loc.line);
    }
    fault(INGOT_EMU_MISALIGNED, ptr, "misaligned access at %s:%u: address %p needs %u-byte alignment",
          d->loc.file, d->loc.line, (void*)ptr, 1u << d->log_alignment);
}
__attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1(
    ingot_emu::TypeMismatchData* d, uintptr_t ptr) {
    ingot_emu_type_mismatch(d, ptr);
}
__attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1_abort(
    ingot_emu::TypeMismatchData* d, uintptr_t ptr) {
    ingot_emu_type_mismatch(d, ptr);
}
__attribute__((visibility("hidden"), noreturn)) inline void ingot_emu_out_of_bounds(
    ingot_emu::SourceLocation* loc) {
    ingot_emu::fault(INGOT_EMU_OUT_OF_RANGE, 0, "array index out of bounds at %s:%u", loc->file,
                     loc->line);
}
__attribute__((visibility("hidden"))) void __ubsan_handle_out_of_bounds(
    ingot_emu::SourceLocation* loc, uintptr_t) {
    ingot_emu_out_of_bounds(loc);
}
__attribute__((visibility("hidden"))) void __ubsan_handle_out_of_bounds_abort(
    ingot_emu::SourceLocation* loc, uintptr_t) {
    ingot_emu_out_of_bounds(loc);
}

// ---- the module's entry points --------------------------------------------------------------

__attribute__((visibility("default"))) uint32_t ingot_emu_abi_version() {
    return INGOT_EMU_ABI_VERSION;
}

__attribute__((visibility("default"))) uint32_t ingot_emu_kernel_count() {
    return ingot_emu::kernel_count;
}

__attribute__((visibility("default"))) const ingot_emu_kernel_info* ingot_emu_kernel(uint32_t i) {
    return i < ingot_emu::kernel_count ? &ingot_emu::kernels[i] : nullptr;
}

// Runs kernel `index` over the whole grid. The driver stand-in has checked the launch shape.
// Blocks run in a permutation drawn from the seed (all of them for grids up to 2^20 blocks,
// in order beyond: the permutation's table would not be worth its memory).
__attribute__((visibility("default"))) int ingot_emu_launch(uint32_t index,
                                                            ingot_emu_launch_spec* s) {
    using namespace ingot_emu;
    spec = s;
    s->message[0] = 0;
    fault_kind = INGOT_EMU_OK;
    cur = nullptr;
    if (index >= kernel_count) return INGOT_EMU_TRAP;
    if (!s->stacks || s->stack_stride % 16) {
        snprintf(s->message, sizeof s->message, "no fiber stacks");
        return INGOT_EMU_STACK;
    }
    entry = invokers[index];
    entry_params = s->params;
    blk.dim = dim3(s->block[0], s->block[1], s->block[2]);
    blk.grid = dim3(s->grid[0], s->grid[1], s->grid[2]);
    blk.threads = s->block[0] * s->block[1] * s->block[2];
    const uint64_t blocks = (uint64_t)s->grid[0] * s->grid[1] * s->grid[2];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    // A stack overflow of a fiber needs an alternate signal stack to be reported.
    static thread_local char alt[64 << 10];
    stack_t ss, old_ss;
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    ss.ss_flags = 0;
    sigaltstack(nullptr, &old_ss);
    const bool own_alt = old_ss.ss_flags & SS_DISABLE;
    if (own_alt) sigaltstack(&ss, nullptr);

    static uint32_t perm[1u << 20];  // untouched pages cost nothing
    const bool shuffled = blocks <= (1u << 20);
    uint64_t rng = s->seed;
    if (shuffled) {
        for (uint64_t i = 0; i < blocks; ++i) perm[i] = (uint32_t)i;
        for (uint64_t i = blocks; i > 1; --i) {
            const uint64_t j = splitmix(&rng) % i;
            const uint32_t tmp = perm[i - 1];
            perm[i - 1] = perm[j];
            perm[j] = tmp;
        }
    }

    launch_thread = pthread_self();
    in_launch = true;
    if (sigsetjmp(fault_jump, 1) == 0) {
        for (uint64_t k = 0; k < blocks; ++k) {
            const uint64_t b = shuffled ? perm[k] : k;
            blk.idx = {(unsigned)(b % blk.grid.x), (unsigned)((b / blk.grid.x) % blk.grid.y),
                       (unsigned)(b / ((uint64_t)blk.grid.x * blk.grid.y))};
            run_block(splitmix(&rng));
        }
    }
    in_launch = false;
    cur = nullptr;
    if (own_alt) {
        ss.ss_flags = SS_DISABLE;
        sigaltstack(&ss, nullptr);
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    return fault_kind;
}
}
