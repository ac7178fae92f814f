//! `cudarc` panics where a library or symbol is missing and unwraps some driver results; every
//! call into it that could do so goes through [`catch`], which turns the panic into a one-line
//! message for the caller's own error type.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic becomes `Err` with its message on one line.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
            .replace('\n', " ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_one_line_messages() {
        assert_eq!(catch(|| 3), Ok(3));
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e = catch(|| -> u8 { panic!("two\nlines") });
        std::panic::set_hook(prev);
        assert_eq!(e, Err("two lines".to_string()));
    }
}
