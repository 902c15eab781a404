//! How every std `Mutex` in the crate is taken.
//!
//! A panic while a lock was held poisons it. Our locks guard plain bookkeeping (counters, slot
//! lists, the last status) that stays valid at every step, so the data is taken as it is
//! rather than turning one task's panic into a panic of every later user (PID 1 must keep
//! supervising the VM).

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) trait Locked<T: ?Sized> {
    /// The guard, poisoned or not.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let mutex = std::sync::Arc::new(Mutex::new(7));
        let held = std::sync::Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poison it");
        })
        .join();
        assert!(panicked.is_err());
        assert!(mutex.is_poisoned());
        *mutex.locked() += 1;
        assert_eq!(*mutex.locked(), 8);
    }
}
