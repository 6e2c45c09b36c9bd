//! Evaluation of trained models: test log-likelihoods, density grids and samples of vector
//! flows ([`vector`]); bits/dim reports, the training-free classifier and checked samples of
//! image Glow ([`images`]).

pub mod images;
pub mod vector;
