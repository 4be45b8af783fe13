"""Workloads that run as task processes over the Task protocol (kernel/tasks.py): LoRA
training (`train`), evaluation (`evaluate`: perplexity, BLEU, ROUGE), the datasets they
read (`dataset`, `evaldata`) and the scores they compute (`scores`). They reach the kernel
only through its public operations."""
