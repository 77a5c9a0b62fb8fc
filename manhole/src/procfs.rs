//! /proc readers (stub)
