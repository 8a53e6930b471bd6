# Evaluate models on math benchmarks with the code-interpreter loop GTPO trains with. Prints one table (pass@1 with
# its 95% interval, avg@k, tool calls per problem, tool error rate) and writes, per model, a JSON summary and each
# benchmark's per-sample traces (turns, code, outputs, answer, correct) as JSON lines.
#
#   python examples/evaluate.py --benchmarks gsm8k,math500,svamp,asdiv,mawps,gsm_hard --limit 200
#   python examples/evaluate.py --model_name_or_path default runs/gtpo --benchmarks synthetic --limit 64 --k 4
#   python examples/evaluate.py --benchmarks gsm8k,./my_data.jsonl,openai/gsm8k --dataset_config main
#
# Benchmarks are the packaged data sets (trl_gtpo.demo.data.DATASET_NAMES) or any `datasets.load_dataset` name or
# local path whose split has `answer` and either `prompt` (conversational) or `question`. Generation runs on vLLM when
# it is installed (every live trajectory of every problem in one batch per turn), else on transformers.

from trl_gtpo.cli.evaluate import main

if __name__ == "__main__":
    main()
