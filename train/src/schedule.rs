//! Learning-rate schedules: linear warmup, then cosine (default), linear, constant, or
//! warmup-stable-decay to `min_lr`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
    /// Warmup, a constant stable phase, then a linear decay over the last `decay_fraction`.
    Wsd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Share of the run spent decaying in `wsd`.
    pub decay_fraction: f64,
}

impl Schedule {
    /// Learning rate for step `step` (0-based: the first optimizer step is step 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        let (lr, min) = (self.lr, self.min_lr);
        match self.kind {
            ScheduleKind::Constant => lr,
            ScheduleKind::Linear => lr - (lr - min) * progress,
            ScheduleKind::Cosine => {
                min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Wsd => {
                let decay = (self.total_steps as f64 * self.decay_fraction)
                    .round()
                    .max(1.0);
                let decay_start = self.total_steps as f64 - decay;
                if (step as f64) < decay_start {
                    lr
                } else {
                    let p = ((step as f64 - decay_start + 1.0) / decay).clamp(0.0, 1.0);
                    lr - (lr - min) * p
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            decay_fraction: 0.2,
        }
    }

    #[test]
    fn warmup_is_linear_from_lr_over_warmup() {
        let s = sched(ScheduleKind::Cosine);
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(4) - 0.5).abs() < 1e-12);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_ends_at_min_and_halves_midway() {
        let s = sched(ScheduleKind::Cosine);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((s.lr_at(110) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_constant_and_wsd() {
        assert!((sched(ScheduleKind::Linear).lr_at(60) - 0.55).abs() < 1e-12);
        assert!((sched(ScheduleKind::Constant).lr_at(100) - 1.0).abs() < 1e-12);
        let w = sched(ScheduleKind::Wsd);
        // 110 steps, the last 22 decay: stable until step 88.
        assert!((w.lr_at(87) - 1.0).abs() < 1e-12);
        assert!(w.lr_at(98) < 1.0 && w.lr_at(98) > 0.1);
        assert!((w.lr_at(109) - 0.1).abs() < 1e-12);
    }
}
