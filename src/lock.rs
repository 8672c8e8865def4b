//! A small futex mutex (three states, after Drepper's "Futexes are tricky"). It never
//! allocates, can be re-initialised in a forked child by storing zero, and spins briefly
//! before sleeping because the sections it guards are short.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::os;

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;
const SPINS: u32 = 64;

pub struct Mutex<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `lock`, which gives one thread at a time access.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves its value; T: Send makes that sound.
unsafe impl<T: Send> Send for Mutex<T> {}

pub struct Guard<'a, T> {
    m: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    pub const fn new(v: T) -> Self {
        Mutex {
            state: AtomicU32::new(UNLOCKED),
            value: UnsafeCell::new(v),
        }
    }

    #[inline]
    pub fn lock(&self) -> Guard<'_, T> {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        Guard { m: self }
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Guard { m: self })
    }

    #[cold]
    fn lock_slow(&self) {
        for _ in 0..SPINS {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            os::futex_wait(&self.state, CONTENDED);
        }
    }

    fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            os::futex_wake(&self.state);
        }
    }

    /// Takes the lock and keeps it (for fork: released by `force_unlock` in the parent,
    /// reset by `reset_in_child` in the child).
    pub fn lock_forever(&self) {
        core::mem::forget(self.lock());
    }

    pub fn force_unlock(&self) {
        self.unlock();
    }

    /// In a forked child only one thread exists; whatever the lock said, nobody holds it now.
    pub fn reset_in_child(&self) {
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }
}

impl<T> core::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread holds the lock.
        unsafe { &*self.m.value.get() }
    }
}

impl<T> core::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this thread holds the lock, so access is exclusive.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.m.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn counts_under_contention() {
        static M: Mutex<u64> = Mutex::new(0);
        let hs: std::vec::Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..100_000 {
                        *M.lock() += 1
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*M.lock(), 400_000);
        assert!(M.try_lock().is_some());
    }
}
