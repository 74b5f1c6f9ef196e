.PHONY: book test setup
setup:
	bash scripts/setup.sh
book:  ## build the HTML book → _build/html/index.html
	bash scripts/book.sh
test:  ## the whole test suite (what CI runs)
	bash scripts/test.sh
