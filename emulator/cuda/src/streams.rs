//! Streams and events. Every operation runs when it is enqueued, so a stream is only a handle
//! (creating and destroying it is checked), a wait is already satisfied, and an event records
//! the host clock (`cuEventElapsedTime` gives host time, not device time).

use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;
use std::time::Instant;

use crate::errors;
use crate::handles::Registry;
use crate::status::*;

struct Stream;

struct Event {
    timing: bool,
    recorded: Mutex<Option<Instant>>,
}

static STREAMS: Registry<Stream> = Registry::new();
static EVENTS: Registry<Event> = Registry::new();

/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: c_uint = 0x2;

/// The legacy default stream (0), `CU_STREAM_LEGACY` (1) and `CU_STREAM_PER_THREAD` (2) are
/// always valid; any other stream must have been created and not destroyed.
pub fn check_stream(stream: usize) -> Result<(), CuResult> {
    if stream <= 2 || STREAMS.get(stream).is_some() {
        Ok(())
    } else {
        Err(INVALID_HANDLE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut usize, _flags: c_uint) -> CuResult {
    if ph.is_null() {
        return INVALID_VALUE;
    }
    *ph = STREAMS.insert(Stream);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut usize,
    flags: c_uint,
    _priority: c_int,
) -> CuResult {
    cuStreamCreate(ph, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CuResult {
    if !least.is_null() {
        *least = 0;
    }
    if !greatest.is_null() {
        *greatest = -5;
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: usize) -> CuResult {
    if STREAMS.remove(stream).is_some() {
        SUCCESS
    } else {
        INVALID_HANDLE
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: usize) -> CuResult {
    match check_stream(stream) {
        Ok(()) => errors::sticky(),
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: usize) -> CuResult {
    cuStreamSynchronize(stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(
    stream: usize,
    event: usize,
    _flags: c_uint,
) -> CuResult {
    if let Err(e) = check_stream(stream) {
        return e;
    }
    if EVENTS.get(event).is_none() {
        return INVALID_HANDLE;
    }
    errors::sticky()
}

/// `CUhostFn`: runs at once (everything before it on the stream has run).
#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(
    stream: usize,
    f: Option<unsafe extern "C" fn(*mut c_void)>,
    user: *mut c_void,
) -> CuResult {
    if let Err(e) = check_stream(stream).and_then(|()| errors::check()) {
        return e;
    }
    match f {
        Some(f) => {
            f(user);
            SUCCESS
        }
        None => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut usize, flags: c_uint) -> CuResult {
    if ph.is_null() {
        return INVALID_VALUE;
    }
    *ph = EVENTS.insert(Event {
        timing: flags & EVENT_DISABLE_TIMING == 0,
        recorded: Mutex::new(None),
    });
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: usize) -> CuResult {
    if EVENTS.remove(event).is_some() {
        SUCCESS
    } else {
        INVALID_HANDLE
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: usize, stream: usize) -> CuResult {
    if let Err(e) = check_stream(stream).and_then(|()| errors::check()) {
        return e;
    }
    let Some(ev) = EVENTS.get(event) else {
        return INVALID_HANDLE;
    };
    *ev.recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecordWithFlags(
    event: usize,
    stream: usize,
    _flags: c_uint,
) -> CuResult {
    cuEventRecord(event, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: usize) -> CuResult {
    if EVENTS.get(event).is_none() {
        return INVALID_HANDLE;
    }
    errors::sticky()
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: usize) -> CuResult {
    cuEventSynchronize(event)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: usize, end: usize) -> CuResult {
    if ms.is_null() {
        return INVALID_VALUE;
    }
    let (Some(a), Some(b)) = (EVENTS.get(start), EVENTS.get(end)) else {
        return INVALID_HANDLE;
    };
    if !a.timing || !b.timing {
        return INVALID_HANDLE;
    }
    let t = |e: &Event| *e.recorded.lock().unwrap_or_else(|e| e.into_inner());
    match (t(&a), t(&b)) {
        (Some(ta), Some(tb)) => {
            let d = if tb >= ta {
                (tb - ta).as_secs_f64()
            } else {
                -(ta - tb).as_secs_f64()
            };
            *ms = (d * 1e3) as f32;
            errors::sticky()
        }
        _ => INVALID_HANDLE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: usize, end: usize) -> CuResult {
    cuEventElapsedTime(ms, start, end)
}
