//! Evaluation of trained models: test log-likelihoods, density grids and samples of vector
//! flows ([`vector`]); bits/dim reports, the training-free classifier and checked samples of
//! image Glow ([`images`]); sample quality against a classifier trained on the data set
//! ([`quality`]); latent-space editing ([`edit`]).

pub mod edit;
pub mod images;
pub mod quality;
pub mod vector;
