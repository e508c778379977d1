from pedcrowd.cli import main

main()
