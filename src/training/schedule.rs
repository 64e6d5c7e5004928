//! Learning-rate schedules, as transformers' `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` define them (the multiplier at optimizer step `step`).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
}

impl Schedule {
    /// Learning rate for the update made at `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return self.peak * s / w.max(1.0);
        }
        let progress = (s - w) / (t - w).max(1.0);
        let factor = match self.decay {
            Decay::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            Decay::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_to_zero() {
        let s = Schedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 12,
            decay: Decay::Linear,
        };
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(2), 0.5);
        assert_eq!(s.lr(4), 1.0);
        assert_eq!(s.lr(8), 0.5);
        assert_eq!(s.lr(12), 0.0);
        let c = Schedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!((c.lr(8) - 0.5).abs() < 1e-12);
        assert!(c.lr(12).abs() < 1e-12);
    }
}
